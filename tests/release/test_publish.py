"""`thinklens publish`: the layout a hub repository takes, SAE folders that load back bit for bit, a
DuckDB release that answers the R1 notebook's queries, and refusals that leave nothing half-written."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.release.notebook import FIRST_ROWS, top_activations_join
from thinklens.features.db import FeatureDB
from thinklens.release.goodfire import duckdb_with_sqlite
from thinklens.sae.formats import load_sae

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def published(indexed_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("published") / "tiny-release"
    done = subprocess.run([sys.executable, "-m", "thinklens", "publish", str(indexed_run), str(out), "--name", "tiny"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def test_the_release_has_the_hub_layout_and_a_manifest_of_every_file(published):
    files = sorted(p.relative_to(published).as_posix() for p in published.rglob("*") if p.is_file())
    assert files == ["README.md", "features/autointerp.db", "features/features.db", "features/tiny.ddb",
                     "layers.1.resid_post/cfg.json", "layers.1.resid_post/sae_weights.safetensors", "manifest.json",
                     "pretrained_saes.yaml", "traces/README.md", "traces/data/train-00000-of-00001.parquet"]
    manifest = json.loads((published / "manifest.json").read_text())
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    for name, entry in manifest["files"].items():
        data = (published / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    card = (published / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: saelens\n") and "| `layers.1.resid_post/` | topk |" in card
    assert "## Evaluation" in card and "## Findings" in card
    assert not list(published.parent.glob(".*partial"))


def test_the_sae_folder_loads_back_bit_for_bit(published, indexed_run):
    assert (published / "layers.1.resid_post" / "cfg.json").read_bytes() == (indexed_run / "sae" / "cfg.json").read_bytes()
    ours, theirs = load_sae(indexed_run / "sae"), load_sae(published / "layers.1.resid_post")
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_duckdb_release_answers_the_notebook_queries_as_our_database_does(published, indexed_run):
    connection = duckdb_with_sqlite(published / "features" / "autointerp.db")
    connection.execute("SET sqlite_all_varchar=true")
    connection.execute(f"ATTACH DATABASE '{published / 'features' / 'tiny.ddb'}' as ds")
    first = [connection.execute(query).fetchall() for query in FIRST_ROWS]
    assert all(first)
    assert [name for name, *_ in connection.execute("DESCRIBE ds.activations").fetchall()] == [
        "feature_id", "sequence_id", "token_idx", "strength"]
    db = FeatureDB(indexed_run / "features.db")
    feature_id = db.search("")[0][0]
    rows = connection.execute(top_activations_join(feature_id, 10, 10)).fetchall()
    view = db.show(feature_id, top=10, window=10)
    theirs = sorted((int(r[2]), int(r[3]), round(float(r[4]), 5), int(r[5]), r[6]) for r in rows)
    ours = sorted((e.sequence_id, e.token_idx, round(e.strength, 5), idx, text)
                  for e in view.examples for idx, text in e.tokens)
    assert theirs == ours and {r[1] for r in rows} == {view.label}
    (count,) = connection.execute("SELECT count(*) FROM ds.activations").fetchone()
    assert count == sqlite3.connect(indexed_run / "features.db").execute("SELECT count(*) FROM activations").fetchone()[0]


def test_serve_ddb_browses_the_published_release(published):
    from thinklens.server.ddb import ReleaseRun

    release = ReleaseRun(published / "features" / "tiny.ddb", published / "features" / "autointerp.db")
    assert release.n_features > 0 and release.summary()["tokens"] > 0


def test_an_existing_out_or_a_run_without_a_database_is_refused(indexed_run, published, tmp_path):
    again = subprocess.run([sys.executable, "-m", "thinklens", "publish", str(indexed_run), str(published)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "already exists: pass a new OUT directory" in again.stderr
    bare = tmp_path / "bare"
    shutil.copytree(indexed_run / "sae", bare / "sae")
    refused = subprocess.run([sys.executable, "-m", "thinklens", "publish", str(bare), str(tmp_path / "out")],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "run `thinklens index" in refused.stderr
    assert not (tmp_path / "out").exists()


def test_push_without_the_hub_is_one_line_and_the_release_stays_complete(indexed_run, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "thinklens", "publish", str(indexed_run), str(out), "--push", "someone/tiny"]
    pushed = subprocess.run(command, capture_output=True, text=True)
    assert pushed.returncode == 2
    assert pushed.stderr.count("\n") == 1 and "could not push" in pushed.stderr and "nothing was reported" in pushed.stderr
    assert "dataset someone/tiny-traces" in pushed.stderr  # the traces go first, to a dataset repository of their own
    assert (out / "manifest.json").is_file() and (out / "traces" / "data").is_dir()
    assert "- someone/tiny-traces" in (out / "README.md").read_text().split("---")[1]  # the card's hub header links it
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    again = subprocess.run(command, capture_output=True, text=True)  # a complete OUT with --push: pushed, not rebuilt
    assert again.returncode == 2 and "could not push" in again.stderr
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


def test_a_push_sends_the_traces_as_a_dataset_and_the_rest_as_the_model(published):
    from thinklens.release.publish import PushTarget, push_targets

    assert push_targets(published, "org/tiny") == [
        PushTarget("org/tiny-traces", "dataset", published / "traces"),
        PushTarget("org/tiny", "model", published, ("traces/*", "traces/**"))]
    from huggingface_hub.utils import filter_repo_objects

    files = [p.relative_to(published).as_posix() for p in published.rglob("*") if p.is_file()]
    model = list(filter_repo_objects(files, ignore_patterns=["traces/*", "traces/**"]))
    assert model and not [name for name in model if name.startswith("traces")]
    assert "README.md" in model and "manifest.json" in model


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".ddb"}


def test_a_killed_publish_resumes_at_its_step_and_ends_the_same(indexed_run, published, tmp_path, monkeypatch):
    from thinklens.pipeline import RunDir
    from thinklens.release import publish as module
    from thinklens.release.config import PublishConfig

    def killed(release):
        raise KeyboardInterrupt

    monkeypatch.setitem(module.PUBLISH_STEPS, "autointerp", killed)
    out = tmp_path / "tiny-release"
    with pytest.raises(KeyboardInterrupt):
        module.publish(PublishConfig(name="tiny"), RunDir(indexed_run), out)
    staging = tmp_path / ".tiny-release.partial"
    assert not out.exists() and (staging / "features" / "tiny.ddb").is_file()
    weights = staging / "layers.1.resid_post" / "sae_weights.safetensors"
    written = weights.stat().st_mtime_ns
    monkeypatch.undo()
    result = module.publish(PublishConfig(name="tiny"), RunDir(indexed_run), out)
    assert result.resumed_steps == 4 and not staging.exists()  # saes, features.db, the two .ddb tables
    assert (out / "layers.1.resid_post" / "sae_weights.safetensors").stat().st_mtime_ns == written
    ours, whole = _files(out), _files(published)
    assert ours.keys() == whole.keys() and all(ours[name] == whole[name] for name in ours if name != "manifest.json")
    manifest = json.loads(ours["manifest.json"])
    expected = json.loads(whole["manifest.json"])
    assert manifest["files"].keys() == expected["files"].keys()
    assert {name: entry for name, entry in manifest["files"].items() if not name.endswith(".ddb")} == {
        name: entry for name, entry in expected["files"].items() if not name.endswith(".ddb")}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()


def test_a_killed_publish_starts_over_when_the_run_changed(indexed_run, tmp_path, monkeypatch):
    from thinklens.pipeline import RunDir
    from thinklens.release import publish as module
    from thinklens.release.config import PublishConfig

    run = tmp_path / "run"
    shutil.copytree(indexed_run, run, ignore=shutil.ignore_patterns("activations"))

    def killed(release):
        raise KeyboardInterrupt

    monkeypatch.setitem(module.PUBLISH_STEPS, "traces", killed)
    with pytest.raises(KeyboardInterrupt):
        module.publish(PublishConfig(), RunDir(run), tmp_path / "out")
    monkeypatch.undo()
    with sqlite3.connect(run / "features.db") as db:  # the run moved on: a label written since
        db.execute("UPDATE autointerp SET label = 'changed since' WHERE feature_id = "
                   "(SELECT min(feature_id) FROM autointerp)")
    result = module.publish(PublishConfig(), RunDir(run), tmp_path / "out")
    assert result.resumed_steps == 0
    labels = sqlite3.connect(tmp_path / "out" / "features" / "autointerp.db").execute(
        "SELECT label FROM autointerp ORDER BY feature_id LIMIT 1").fetchone()
    assert labels == ("changed since",)


def _old_layout_run(indexed_run: Path, tmp_path: Path) -> Path:
    """A run whose BatchTopK SAE has the cfg.json an older thinklens wrote ('batchtopk', topk activation)."""
    from thinklens.sae.formats import save_sae
    from thinklens.sae.sae import Sae, SaeConfig

    run = tmp_path / "old"
    shutil.copytree(indexed_run, run, ignore=shutil.ignore_patterns("activations", "traces"))
    sae = Sae(SaeConfig(arch="batchtopk_tied", d_in=64, d_sae=128, k=4, layer=1, model="tiny"))
    sae.calibrate_threshold([torch.randn(256, 64)])
    save_sae(sae.eval(), run / "sae")
    cfg = json.loads((run / "sae" / "cfg.json").read_text())
    cfg.update(architecture="batchtopk", activation_fn="topk", activation_fn_kwargs={"k": 4})
    (run / "sae" / "cfg.json").write_text(json.dumps(cfg))
    return run


def test_an_sae_in_an_older_cfg_layout_is_published_in_the_one_saelens_opens(indexed_run, tmp_path):
    run = _old_layout_run(indexed_run, tmp_path)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "thinklens", "publish", str(run), str(out), "--no-traces"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cfg = json.loads((out / "layers.1.resid_post" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    ours, theirs = load_sae(run / "sae"), load_sae(out / "layers.1.resid_post")
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_saelens_opens_the_published_sae_and_encodes_as_thinklens(published):
    """Runs where SAELens is installed (its own environment: it pins transformer-lens); skipped otherwise."""
    sae_lens = pytest.importorskip("sae_lens")
    folder = published / "layers.1.resid_post"
    theirs, ours = sae_lens.SAE.load_from_disk(str(folder), device="cpu"), load_sae(folder)
    x = torch.randn(32, ours.config.d_in, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(theirs.encode(x), ours.encode(x).dense(), atol=1e-6)


def test_the_card_carries_the_runs_findings_and_map(indexed_run, tmp_path):
    """The findings' verdicts with their intervals and the map picture, read from the run's own records."""
    from thinklens.analysis.findings import claim_finding
    from thinklens.files import confine_writes, write_envelope

    run = tmp_path / "run"
    shutil.copytree(indexed_run, run, ignore=shutil.ignore_patterns("activations", "traces"))
    finding = claim_finding(1, "Reasoning opens with \"Okay,\"", "> 95 % of traces begin with \"Okay,\".",
                            "share of traces opening with Okay", 0.97, 0.93, 0.99, 0.95, "thinklens analyze RUN", {})
    with confine_writes(run):
        write_envelope(run / "findings.json", {}, {}, {"findings": [finding.__dict__]})
    (run / "map.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # the card links the file; its pixels are not read
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "thinklens", "publish", str(run), str(out), "--no-traces"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    card = (out / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| 1. Reasoning opens"))
    assert "0.97 [0.93, 0.99]" in row and f"**{finding.verdict}**" in row
    assert "![feature map](map.png)" in card and (out / "map.png").read_bytes() == (run / "map.png").read_bytes()
