"""`thinklens import r1`: a run directory made from Goodfire's DeepSeek-R1 release files.

The SAE file (`DeepSeek-R1-SAE-l37.pt`: a state dict of `W` (d_in × d_sae), `b_enc`, `b_dec`, a tied
BatchTopK SAE, `x @ W + b_enc` with no centring, k 64 for the general-reasoning SAE and 128 for the
maths one) becomes RUN/sae in our layout (W_dec = Wᵀ; no learnt threshold: it selects per batch, as
the release's code does). The feature database (`.ddb` + `autointerp.db`) is summarised into
RUN/features.db in our layout (per-feature statistics, histograms, top and quantile examples with
their context, labels), which `thinklens features`, `serve` and the map read; the .ddb itself is
attached, never copied (RUN/features.db's meta names it). The model is not needed to browse; what
needs R1 itself (steering, explain-text) says so.

The summary is built in RUN/features.db.partial, step by step, each step recorded there when done, and
the long one (the pass over every activation row, `release.scan`) checkpointed beside it every
`checkpoint_seconds`: a killed import resumes at its step, mid-pass from the rows the checkpoint
holds, and RUN/features.db appears only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch

from thinklens.errors import ThinklensError
from thinklens.progress import progress_bar
from thinklens.release.config import ImportR1Config

CONTEXT_WINDOW = 16  # tokens kept either side of each top example, so pages show context without the .ddb


@dataclass
class ImportResult:
    run: Path
    d_in: int
    d_sae: int
    features: int | None  # features with stored examples, when a database was imported
    resumed_steps: int = 0


def import_r1(config: ImportR1Config, run: object) -> ImportResult:
    """Make `run` (a RunDir) from the release files: RUN/sae, and RUN/features.db when `config.db` is given."""
    state = _read_state(config.sae)
    sae = _to_sae(state, config)
    _save(sae, config, run.sae)
    features, resumed = (None, 0) if config.db is None else _import_db(config, run.features_db, sae.config.d_sae,
                                                                       show_progress=True)
    return ImportResult(run.root, sae.config.d_in, sae.config.d_sae, features, resumed)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ThinklensError(f"no SAE file at {path}: pass the release's .pt (e.g. DeepSeek-R1-SAE-l37.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike: not a state dict
        raise ThinklensError(f"{path} is not a PyTorch state dict ({type(exc).__name__}): pass the release's .pt") from None
    missing = [key for key in ("W", "b_enc", "b_dec") if key not in state]
    if not isinstance(state, dict) or missing:
        raise ThinklensError(f"{path} lacks {missing or 'a state dict'}: the R1 release's SAE holds W (d_in × d_sae), "
                             "b_enc and b_dec")
    d_in, d_sae = state["W"].shape
    if state["b_enc"].shape != (d_sae,) or state["b_dec"].shape != (d_in,):
        raise ThinklensError(f"{path}: W is {d_in} × {d_sae} but b_enc has {tuple(state['b_enc'].shape)} and b_dec "
                             f"{tuple(state['b_dec'].shape)}: not the release's tied SAE")
    return state


def _to_sae(state: dict[str, torch.Tensor], config: ImportR1Config):
    from thinklens.sae.sae import Sae, SaeConfig

    d_in, d_sae = state["W"].shape
    if config.k > d_sae:
        raise ThinklensError(f"k = {config.k} of {d_sae} features: pass --k 64 (reasoning SAE) or 128 (maths SAE)")
    sae = Sae(SaeConfig(arch="batchtopk_tied", d_in=d_in, d_sae=d_sae, k=config.k, centred_encoder=False,
                        model=config.model, layer=config.layer, chat_format="r1"))
    with torch.no_grad():
        sae.W_dec.copy_(state["W"].float().T)
        sae.b_enc.copy_(state["b_enc"].float())
        sae.b_dec.copy_(state["b_dec"].float())
    return sae.eval()


def _save(sae, config: ImportR1Config, directory: Path) -> None:
    from thinklens.models.loader import file_sha256
    from thinklens.sae.formats import save_sae

    digest = file_sha256(Path(config.sae))  # chunked: the release's file is 822 MB
    save_sae(sae, directory, metadata={"imported": {"from": "Goodfire DeepSeek-R1 SAE release", "file":
                                                    Path(config.sae).name, "sha256": digest, "k": config.k},
                                       "final": {}, "steps": 0})


def _import_db(config: ImportR1Config, target: Path, d_sae: int, show_progress: bool) -> tuple[int, int]:
    """RUN/features.db summarised from the release database; returns (features, steps found already done)."""
    from thinklens.release.goodfire import (
        ReleaseSource,
        check_release_layout,
        open_release,
        summarise_release,
    )
    from thinklens.release.scan import checkpoint_for

    ddb = Path(config.db)
    if not ddb.is_file():
        raise ThinklensError(f"no DuckDB file at {ddb}: pass the release's .ddb (e.g. logic-1.ddb)")
    if config.autointerp is not None and not Path(config.autointerp).is_file():
        raise ThinklensError(f"no autointerp file at {config.autointerp}: pass the release's autointerp.db")
    partial = target.with_name(target.name + ".partial")
    spill = target.parent / ".import-spill"  # DuckDB's, beyond its memory limit; removed when done
    with closing(sqlite3.connect(partial)) as out:
        out.execute("CREATE TABLE IF NOT EXISTS import_steps (step TEXT PRIMARY KEY, source TEXT NOT NULL)")
        stat = ddb.stat()
        source = json.dumps([str(ddb.resolve()), stat.st_size, stat.st_mtime_ns, str(config.autointerp)])
        out.execute("DELETE FROM import_steps WHERE source != ?", (source,))  # a partial import of other files
        done = frozenset(row[0] for row in out.execute("SELECT step FROM import_steps"))
        checkpoint = checkpoint_for(partial, source, d_sae, config.checkpoint_seconds)
        with closing(open_release(ddb, spill, config.memory_limit)) as duck:
            check_release_layout(duck, ddb)
            (most, rows) = duck.execute("SELECT max(feature_id), count(*) FROM activations").fetchone()
            if most is not None and most >= d_sae:
                raise ThinklensError(f"{ddb} holds feature {most} but the SAE has {d_sae} features: pass the database "
                                     "of this SAE (the release's logic and maths files go together)")
            with progress_bar("import: activation rows", total=int(rows), enabled=show_progress,
                              unit="rows") as bar:
                if "features" in done:
                    bar.advance(int(rows))

                def finished(step: str) -> None:
                    out.execute("INSERT OR REPLACE INTO import_steps VALUES (?, ?)", (step, source))
                    out.commit()
                    if step == "features":
                        checkpoint.remove()  # the pass's rows are committed: its checkpoint is spent
                    bar.advance(0, status=f"{step} done")

                summarise_release(out, ReleaseSource(
                    duck.cursor(), Path(config.autointerp) if config.autointerp else None, CONTEXT_WINDOW, d_sae,
                    checkpoint, lambda n: bar.advance(n, tokens=n)), skip=done, on_step=finished)
            (tokens,) = duck.execute("SELECT count(*) FROM tokens").fetchone()
        shutil.rmtree(spill, ignore_errors=True)
        _write_meta(out, config, ddb, int(tokens))
        out.execute("DROP TABLE import_steps")
        out.commit()
        (features,) = out.execute("SELECT count(*) FROM features").fetchone()
    os.replace(partial, target)
    return int(features), len(done)


def _write_meta(out: sqlite3.Connection, config: ImportR1Config, ddb: Path, tokens: int) -> None:
    from thinklens.features.build import DB_FORMAT_VERSION

    meta = {"format_version": DB_FORMAT_VERSION, "model": config.model, "layer": config.layer,
            "hook_name": f"layers.{config.layer}.resid_post", "sae_arch": "batchtopk_tied", "k": config.k,
            "d_sae": int(out.execute("SELECT coalesce(max(feature_id), -1) + 1 FROM features").fetchone()[0]),
            "tokens": tokens, "indexed_tokens": tokens, "source": "Goodfire DeepSeek-R1 release",
            "source_ddb": str(ddb.resolve()),
            "source_autointerp": str(Path(config.autointerp).resolve()) if config.autointerp else None,
            "arguments": {"imported": True}}
    out.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(key, json.dumps(value)) for key, value in meta.items()])
