"""RunDir (layout, run.yaml, confined deletes and writes), the envelope's freshness rule, and the typed SAE card."""

from __future__ import annotations

import json

import pytest

from thinklens.errors import ThinklensError
from thinklens.files import check_inside_run, fresh_result, write_envelope, write_json_atomic
from thinklens.pipeline import RunDir
from thinklens.pipeline.lock import run_lock
from thinklens.sae.formats import read_sae_card, save_sae
from thinklens.sae.sae import Sae, SaeConfig


def test_fresh_result_worked_example(tmp_path):
    target, plot = tmp_path / "shift.json", tmp_path / "shift.png"
    write_envelope(target, {"sae_sha256": "ab", "layers": (1, 2)}, {"top": 10}, {"jsd": 0.4})
    plot.write_bytes(b"png")
    # Same inputs (a tuple compares equal to the list JSON gives back) and config: the stored result.
    assert fresh_result(target, {"sae_sha256": "ab", "layers": [1, 2]}, {"top": 10}, [plot]) == {"jsd": 0.4}
    assert fresh_result(target, {"sae_sha256": "cd", "layers": [1, 2]}, {"top": 10}, [plot]) is None  # other SAE
    assert fresh_result(target, {"sae_sha256": "ab", "layers": [1, 2]}, {"top": 11}, [plot]) is None  # other config
    plot.unlink()
    assert fresh_result(target, {"sae_sha256": "ab", "layers": [1, 2]}, {"top": 10}, [plot]) is None  # plot gone
    target.write_text("{half a file")
    assert fresh_result(target, {}, {}) is None


def test_run_yaml_records_stages_and_is_left_alone_when_unchanged(tmp_path):
    rundir = RunDir(tmp_path / "run")
    rundir.record_config({"out": "run", "harvest": {"layers": [1]}})
    rundir.record_stage("harvest", {"layers": [1]}, {"tokens": 12})
    mtime = rundir.run_yaml.stat().st_mtime_ns
    rundir.record_stage("harvest", {"layers": [1]}, {"tokens": 12})
    assert rundir.run_yaml.stat().st_mtime_ns == mtime
    record = rundir.record()
    assert record.format_version == 2 and record.stages["harvest"].resolved == {"tokens": 12}


def test_remove_is_confined_to_the_run_and_never_follows_a_link(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    rundir = RunDir(tmp_path / "run")
    rundir.root.mkdir()
    (rundir.root / "sweeps").symlink_to(outside, target_is_directory=True)
    assert rundir.remove(rundir.sweeps)  # the link goes, what it points to stays
    assert not rundir.sweeps.exists() and (outside / "keep.txt").read_text() == "keep"
    with pytest.raises(ThinklensError, match="outside the run directory"):
        rundir.remove(outside / "keep.txt")
    with pytest.raises(ThinklensError, match="plain directory name"):
        rundir.sweep_dir("../escape")
    assert rundir.artifact("analysis_json:shift") == rundir.root / "analysis" / "shift.json"


def test_sae_card_reads_our_layout_and_saelens_keys(tmp_path):
    ours = tmp_path / "ours"
    save_sae(Sae(SaeConfig(arch="batchtopk_tied", d_in=8, d_sae=16, k=2, layer=3)), ours, metadata={"steps": 5})
    card = read_sae_card(ours)
    assert (card.config.arch, card.config.layer, card.steps, card.format_version) == ("batchtopk_tied", 3, 5, 1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "cfg.json").write_text(json.dumps({"architecture": "topk", "d_in": 8, "d_sae": 16,
                                                  "activation_fn_kwargs": {"k": 4}, "hook_layer": None}))
    card = read_sae_card(foreign)
    assert (card.config.arch, card.config.k, card.config.layer, card.format_version) == ("topk", 4, None, 0)


def test_writes_under_the_run_lock_never_follow_a_link_out_of_the_run(tmp_path):
    outside = tmp_path / "other-run"
    outside.mkdir()
    root = tmp_path / "run"
    root.mkdir()
    (root / "sae").symlink_to(outside, target_is_directory=True)
    (root / "features.db").symlink_to(outside / "features.db")
    (outside / "features.db").write_text("theirs")
    with run_lock(root, "test"):
        with pytest.raises(ThinklensError, match="leads to .*other-run.*outside the run directory"):
            write_json_atomic(root / "sae" / "eval.json", {})
        with pytest.raises(ThinklensError, match="outside the run directory"):
            check_inside_run(root / "features.db", follow=True)  # a database written in place
        write_json_atomic(root / "features.db", {})  # replaced atomically: the link goes, theirs stays
        write_json_atomic(tmp_path / "cache" / "assets.json", {}, confined=False)
    assert (outside / "features.db").read_text() == "theirs" and not (root / "features.db").is_symlink()
    assert list(outside.iterdir()) == [outside / "features.db"]
    write_json_atomic(root / "sae" / "eval.json", {})  # without the lock, a caller's explicit path is its own
    assert (outside / "eval.json").is_file()
