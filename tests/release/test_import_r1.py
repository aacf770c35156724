"""`thinklens import r1`: Goodfire's release files, built tiny in their exact layouts (the .pt's W, b_enc,
b_dec; the .ddb's tables and column types; the SQLite autointerp file), become a run that `features`,
`serve` and the feature pages read; a killed import resumes at its step."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from math import prod
from pathlib import Path

import pytest
import torch

from thinklens.errors import ThinklensError
from thinklens.pipeline import RunDir
from thinklens.release import goodfire
from thinklens.release.config import ImportR1Config
from thinklens.release.goodfire import write_autointerp, write_release_ddb
from thinklens.release.importer import import_r1
from thinklens.sae.formats import load_sae

pytestmark = pytest.mark.integration
D_IN, D_SAE = 64, 128  # the tiny run's width and SAE, whose database the release files are made from


def _release_encode(state: dict[str, torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
    """The release's own rule, restated: ReLU(x W + b_enc), then the k·n largest entries of the batch."""
    f = torch.relu(x @ state["W"] + state["b_enc"])
    top = torch.topk(f.flatten(), k * prod(f.shape[:-1]))
    return torch.zeros_like(f.flatten()).scatter(-1, top.indices, top.values).reshape(f.shape)


@pytest.fixture(scope="module")
def release(indexed_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("r1-release")
    generator = torch.Generator().manual_seed(0)
    state = {"W": torch.randn(D_IN, D_SAE, generator=generator) * 0.3,
             "b_enc": torch.randn(D_SAE, generator=generator) * 0.1, "b_dec": torch.randn(D_IN, generator=generator)}
    torch.save(state, root / "DeepSeek-R1-SAE-l37.pt")
    write_release_ddb(indexed_run / "features.db", root / "logic-1.ddb")
    write_autointerp(indexed_run / "features.db", root / "autointerp.db")
    return {"sae": root / "DeepSeek-R1-SAE-l37.pt", "db": root / "logic-1.ddb", "autointerp": root / "autointerp.db",
            "state": state}


def _config(release: dict[str, Path], **extra) -> ImportR1Config:
    return ImportR1Config(**{"sae": release["sae"], "db": release["db"], "autointerp": release["autointerp"], "k": 4, **extra})


def test_the_imported_sae_encodes_as_the_release_code_does(release, tmp_path):
    import_r1(_config(release, db=None), RunDir(tmp_path / "run"))
    sae = load_sae(tmp_path / "run" / "sae")
    assert (sae.config.arch, sae.config.d_in, sae.config.d_sae, sae.config.k, sae.config.layer) == (
        "batchtopk_tied", D_IN, D_SAE, 4, 37)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    ours = sae.encode(x, batch_dependent=True).dense()
    assert torch.allclose(ours, _release_encode(release["state"], x, 4), atol=1e-5)
    recon = sae.decode(sae.encode(x, batch_dependent=True))
    assert torch.allclose(recon, _release_encode(release["state"], x, 4) @ release["state"]["W"].T
                          + release["state"]["b_dec"], atol=1e-5)


def test_features_and_serve_read_the_imported_run(release, tmp_path, indexed_run):
    out = tmp_path / "run"
    made = subprocess.run([sys.executable, "-m", "thinklens", "import", "r1", "--sae", str(release["sae"]), "--k", "4",
                           "--db", str(release["db"]), "--autointerp", str(release["autointerp"]), "--out", str(out)],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    db = sqlite3.connect(out / "features.db")
    feature, label = db.execute("SELECT feature_id, label FROM autointerp ORDER BY feature_id LIMIT 1").fetchone()
    shown = subprocess.run([sys.executable, "-m", "thinklens", "features", str(out), "show", str(feature)],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert label in shown.stdout and "seq" in shown.stdout  # its label and its examples, with context
    original = sqlite3.connect(indexed_run / "features.db")
    assert db.execute("SELECT count(*) FROM features").fetchone() == original.execute(
        "SELECT count(DISTINCT feature_id) FROM activations").fetchone()
    from thinklens.server.catalog import ServedRun

    served = ServedRun(out)
    assert served.summary()["sae"]["d_sae"] == D_SAE
    assert served.examples(feature)  # the feature page's examples
    for command in (["features", str(out), "explain-text", "Okay, so"],
                    ["steer", str(out), "--feature", str(feature), "--strength", "2", "--prompt", "Hi"]):
        needs = subprocess.run([sys.executable, "-m", "thinklens", *command], capture_output=True, text=True)
        assert needs.returncode == 2 and "imported from the Goodfire DeepSeek-R1 SAE release without its model" in \
            needs.stderr and "runs deepseek-ai/DeepSeek-R1 itself" in needs.stderr, needs.stderr
    mapped = subprocess.run([sys.executable, "-m", "thinklens", "map", str(out)], capture_output=True, text=True)
    assert mapped.returncode == 0, mapped.stderr
    assert (out / "map.html").is_file() and (out / "map.png").is_file()


def _dump(path: Path) -> list[str]:
    return [line for line in sqlite3.connect(path).iterdump() if "schema_migrations" not in line and "source_" not in line]


def test_a_killed_import_resumes_at_its_step_and_ends_the_same(release, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    import_r1(_config(release), RunDir(whole))
    real = goodfire.RELEASE_STEPS["tokens"]

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setitem(goodfire.RELEASE_STEPS, "tokens", (real[0], killed))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        import_r1(_config(release), RunDir(run))
    partial = run / "features.db.partial"
    assert partial.is_file() and not (run / "features.db").exists()
    assert {row[0] for row in sqlite3.connect(partial).execute("SELECT step FROM import_steps")} == {"features"}
    monkeypatch.setitem(goodfire.RELEASE_STEPS, "tokens", real)
    result = import_r1(_config(release), RunDir(run))
    assert result.resumed_steps == 1
    assert _dump(run / "features.db") == _dump(whole / "features.db")


def test_an_import_killed_in_its_pass_resumes_from_the_checkpoint(release, tmp_path, monkeypatch):
    """Killed mid-way through the pass over the activations (in small batches, a checkpoint after each),
    the import resumes from the rows the checkpoint holds and writes the database the whole import did."""
    from thinklens.features.build import FeatureStats
    from thinklens.release import scan

    whole = tmp_path / "whole"
    import_r1(_config(release), RunDir(whole))
    monkeypatch.setattr(scan, "BATCH_ROWS", 64)
    add, calls = FeatureStats.add, []

    def counted(self, *args, **kwargs):
        calls.append(len(args[0]))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return add(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStats, "add", counted)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        import_r1(_config(release, checkpoint_seconds=1e-9), RunDir(run))
    assert (run / "features.db.partial.checkpoint").is_file()
    import duckdb

    (total,) = duckdb.connect(str(release["db"]), read_only=True).execute("SELECT count(*) FROM activations").fetchone()
    calls.clear()
    monkeypatch.setattr(FeatureStats, "add", lambda self, *a, **k: (calls.append(len(a[0])), add(self, *a, **k)))
    import_r1(_config(release, checkpoint_seconds=1e-9), RunDir(run))
    assert sum(calls) == total - 3 * 64  # the three batches the checkpoint holds are not read again
    assert not (run / "features.db.partial.checkpoint").exists()
    assert _dump(run / "features.db") == _dump(whole / "features.db")


def test_files_not_in_the_release_layout_are_one_line_naming_it(release, tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"W_enc": torch.zeros(2, 2)}, bad)
    with pytest.raises(ThinklensError, match="lacks \\['W', 'b_enc', 'b_dec'\\]"):
        import_r1(ImportR1Config(sae=bad), RunDir(tmp_path / "run"))
    with pytest.raises(ThinklensError, match="k = 200 of 128 features"):
        import_r1(ImportR1Config(sae=release["sae"], k=200), RunDir(tmp_path / "run"))
    small = tmp_path / "small.pt"
    torch.save({"W": torch.zeros(D_IN, 8), "b_enc": torch.zeros(8), "b_dec": torch.zeros(D_IN)}, small)
    with pytest.raises(ThinklensError, match="but the SAE has 8 features: pass the database of this SAE"):
        import_r1(ImportR1Config(sae=small, k=2, db=release["db"]), RunDir(tmp_path / "run2"))
    with pytest.raises(ThinklensError, match="no DuckDB file"):
        import_r1(ImportR1Config(sae=release["sae"], k=4, db=tmp_path / "none.ddb"), RunDir(tmp_path / "run"))
    with pytest.raises(ValueError, match="memory_limit"):
        _config(release, memory_limit="lots")
    refused = subprocess.run([sys.executable, "-m", "thinklens", "import", "r1", "--sae", str(release["sae"]), "--db",
                              str(release["db"]), "--memory-limit", "lots", "--out", str(tmp_path / "run3")],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "memory" in refused.stderr and not (tmp_path / "run3" / "sae").exists()


def test_the_imported_examples_are_each_features_strongest_and_a_spread_below(release, tmp_path):
    """Each feature's TOP strongest rows of the .ddb (ties by sequence, token), then up to QUANTILES weaker
    ones; every top example carries its context tokens from the .ddb's tokens."""
    import duckdb

    ddb = tmp_path / "many.ddb"  # every token with 8 of the 128 features: ~250 rows a feature, ties included
    with duckdb.connect(str(ddb)) as duck:
        duck.execute(goodfire.TOKENS_DDL)
        duck.execute("INSERT INTO tokens SELECT i // 100, (i % 100)::INT, (i % 37)::INT, 't' || (i % 37)::VARCHAR "
                     "FROM range(4000) t(i)")
        duck.execute(goodfire.ACTIVATIONS_DDL)
        duck.execute(f"INSERT INTO activations SELECT ((i * 31 + j * 16) % {D_SAE})::INT, i // 100, (i % 100)::INT, "
                     "round(((i * 7 + j * 13) % 50) / 10, 1)::FLOAT FROM range(4000) t(i), range(8) f(j)")
    run = tmp_path / "run"
    import_r1(_config(release, db=ddb, autointerp=None), RunDir(run))
    mirror = sqlite3.connect(run / "features.db")
    source = duckdb.connect(str(ddb), read_only=True)
    ranked = source.execute("""SELECT feature_id, sequence_id, token_idx, strength, row_number() OVER (PARTITION BY
                                 feature_id ORDER BY strength DESC, sequence_id, token_idx) AS r FROM activations""").fetchall()
    strongest: dict[int, list[float]] = {}
    for f, _, _, v, r in ranked:
        if r <= goodfire.TOP:
            strongest.setdefault(f, []).append(v)
    rows = {(f, s, t): v for f, s, t, v, _ in ranked}
    stored = {(f, s, t): v for f, s, t, v in mirror.execute("SELECT * FROM activations ORDER BY feature_id, "
                                                              "strength DESC")}
    assert all(rows[key] == value for key, value in stored.items())  # every example is a row of the .ddb
    kept: dict[int, list[float]] = {}
    for (f, _, _), v in stored.items():
        kept.setdefault(f, []).append(v)
    for feature, values in strongest.items():  # the TOP strongest strengths (which of tied rows: the first read)
        assert kept[feature][:goodfire.TOP] == values
        assert 0 < len(kept[feature]) - goodfire.TOP <= goodfire.QUANTILES  # and a spread below them
    top = {(f, s, t) for (f, s, t), v in stored.items() if v >= strongest[f][-1]}
    tokens = dict(((s, t), tok) for s, t, tok, _ in source.execute("SELECT * FROM tokens").fetchall())
    context = {(s, t): tok for s, t, tok, _ in mirror.execute("SELECT * FROM token_ids")}
    for _, sequence, token in top:
        for idx in range(token - 16, token + 17):
            if (sequence, idx) in tokens:
                assert context[(sequence, idx)] == tokens[(sequence, idx)]
