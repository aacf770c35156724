"""`import r1` of a release database at two sizes: throughput against a plain scan, and peak memory.

Builds a synthetic database in the R1 release layout (DuckDB `tokens` and `activations`, every token
with `--k` features, strengths heavy-tailed) at `--tokens` and 4× that, imports each in a fresh
process (`thinklens.release.importer`'s database step: statistics, histograms, examples, tokens with
context) and prints per size: rows, seconds, rows/s, peak RSS, and two ratios measured in the same
run: import time ÷ one full `GROUP BY` scan of the same database (the least any summary costs), and
peak RSS at 4× ÷ peak RSS at 1× (≈ 1 when memory does not grow with the database).

    .venv/bin/python -m benchmarks.import_r1 [--tokens 200000] [--k 32] [--d-sae 28672]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from pathlib import Path
from thinklens.release.config import ImportR1Config
from thinklens.release.importer import _import_db
ddb, target, d_sae, memory = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
started = time.perf_counter()
features, _ = _import_db(ImportR1Config(sae="unused.pt", db=ddb, memory_limit=memory), target, d_sae, False)
print(json.dumps({"seconds": time.perf_counter() - started, "features": features,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_release(path: Path, tokens: int, k: int, d_sae: int, sequence: int = 1000) -> int:
    """A database in the release layout; returns its activation rows."""
    import duckdb

    from thinklens.release.goodfire import ACTIVATIONS_DDL, TOKENS_DDL

    with duckdb.connect(str(path)) as duck:
        duck.execute(TOKENS_DDL)
        duck.execute(f"""INSERT INTO tokens SELECT i // {sequence}, (i % {sequence})::INT, (hash(i) % 50000)::INT,
                         'tok' || (hash(i) % 50000)::VARCHAR FROM range({tokens}) t(i)""")
        duck.execute(ACTIVATIONS_DDL)
        duck.execute(f"""INSERT INTO activations SELECT ((hash(i) + j * 997) % {d_sae})::INT, i // {sequence},
                         (i % {sequence})::INT, (-ln(1 - random()) * 3)::FLOAT
                         FROM range({tokens}) t(i), range({k}) f(j)""")
        return int(duck.execute("SELECT count(*) FROM activations").fetchone()[0])


def scan_seconds(path: Path) -> float:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as duck:
        started = time.perf_counter()
        duck.execute("SELECT feature_id, count(*), max(strength), avg(strength) FROM activations GROUP BY 1").fetchall()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--d-sae", type=int, default=28_672)
    parser.add_argument("--memory-limit", default="256MB", help="DuckDB's memory limit in the import (spills beyond)")
    args = parser.parse_args()
    peaks = []
    with tempfile.TemporaryDirectory() as directory:
        for scale in (1, 4):
            ddb = Path(directory) / f"release-{scale}.ddb"
            rows = make_release(ddb, args.tokens * scale, args.k, args.d_sae)
            scan = scan_seconds(ddb)
            done = subprocess.run([sys.executable, "-c", CHILD, str(ddb), str(Path(directory) / f"run-{scale}.db"),
                                   str(args.d_sae), args.memory_limit], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr)
            figures = json.loads(done.stdout.splitlines()[-1])
            peaks.append(figures["peak_mib"])
            print(f"{scale}×: {args.tokens * scale:,} tokens, {rows:,} activation rows "
                  f"({ddb.stat().st_size / 2**20:,.0f} MiB): import {figures['seconds']:.1f} s "
                  f"({rows / figures['seconds']:,.0f} rows/s, {figures['features']:,} features), "
                  f"{figures['seconds'] / scan:.1f}× one GROUP BY scan ({scan:.2f} s), peak RSS {figures['peak_mib']:,.0f} MiB")
    print(f"peak RSS 4× ÷ 1×: {peaks[1] / peaks[0]:.2f} (DuckDB memory limit {args.memory_limit})")


if __name__ == "__main__":
    main()
