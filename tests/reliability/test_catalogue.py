"""Hostile but fair input, case by case: each gives one line naming the fix, exit code 2, and leaves the
run directory exactly as it was (a hash of every file under it, before and after).

The table is the catalogue; the tests after it are the faults a table cannot express (another
writer holding the run, a killed writer's temp files, a run directory whose name a URI would cut).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thinklens.cli import app
from thinklens.pipeline.lock import LOCK_NAME


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # {run}: a copy of a complete tiny run; {file}: a plain file beside it
    message: str  # a regular expression the one error line must match
    prepare: str | None = None  # a fault to make first (see _prepare)


CATALOGUE = [
    Case("collect a model that does not exist", ("collect", "--model", "does/not/exist", "--out", "{new}"),
         r"does/not/exist"),
    Case("collect into a path that is a file", ("collect", "--model", "smollm2", "--out", "{file}"), r"is a file"),
    Case("show a negative feature id", ("features", "{run}", "show", "-1"), r"feature -1 does not exist"),
    Case("show a feature id beyond 64 bits", ("features", "{run}", "show", str(10**20)), r"does not exist"),
    Case("neighbours of a feature the SAE lacks", ("features", "{run}", "neighbors", "100000"), r"does not exist"),
    Case("show on a feature database that is text", ("features", "{run}", "show", "0"),
         r"not a readable feature database", prepare="features.db is text"),
    Case("show on a truncated feature database", ("features", "{run}", "show", "0"),
         r"not a readable feature database", prepare="features.db is truncated"),
    Case("train with an infinite learning rate", ("train", "{run}", "--lr", "inf"), r"lr: .*finite"),
    Case("train with NaN as the learning rate", ("train", "{run}", "--lr", "nan"), r"lr: .*finite"),
    Case("train more active features than the SAE has", ("train", "{run}", "--k", "100000"), r"k = 100000"),
    Case("harvest one layer twice", ("harvest", "{run}", "--layer", "1", "--layer", "1"), r"each layer once"),
    Case("steer at NaN strength", ("steer", "{run}", "--feature", "0", "--strength", "nan", "--prompt", "2+2?"),
         r"strength: .*finite"),
    Case("steer at infinite strength", ("steer", "{run}", "--feature", "0", "--strength", "inf", "--prompt", "2+2?"),
         r"strength: .*finite"),
    Case("steer at 1e30", ("steer", "{run}", "--feature", "0", "--strength", "1e30", "--prompt", "2+2?"),
         r"strength: .*1000"),
    Case("steer an empty prompt", ("steer", "{run}", "--feature", "0", "--strength", "2", "--prompt", ""),
         r"prompt: "),
    Case("steer a prompt longer than the model's context", ("steer", "{run}", "--feature", "0", "--strength", "2",
                                                             "--prompt", "what is 2 + 2? " * 300),
         r"tokens and .* reads at most 512: shorten the prompt"),
    Case("explain a text longer than the model's context", ("features", "{run}", "explain-text", "two plus two " * 400),
         r"reads at most 512: explain a shorter text"),
    Case("explain an empty text", ("features", "{run}", "explain-text", "  "), r"empty"),
    Case("steer a feature the SAE lacks", ("steer", "{run}", "--feature", "100000", "--strength", "2", "--prompt",
                                           "2+2?"), r"feature 100000 does not exist"),
    Case("sweep a feature the SAE lacks", ("sweep", "{run}", "--feature", "100000", "--strengths", "0,2"),
         r"feature 100000 does not exist"),
    Case("sweep at an infinite strength", ("sweep", "{run}", "--feature", "0", "--strengths", "0,inf"),
         r"strengths must be finite"),
    Case("sweep named out of the run", ("sweep", "{run}", "--feature", "0", "--name", "../../escaped"),
         r"plain directory name"),
    Case("sweep named by an absolute path", ("sweep", "{run}", "--feature", "0", "--name", "/tmp/escaped"),
         r"plain directory name"),
    Case("contrast on an unknown key", ("contrast", "{run}", "--a", "colour=red", "--b", "operator=*"),
         r"unknown key 'colour'"),
    Case("contrast on a token no trace has", ("contrast", "{run}", "--a", "token=Zzyzx", "--b", "token!=Zzyzx"),
         r"allow no token"),
    Case("findings with a bootstrap too small to give an interval", ("findings", "{run}", "--bootstrap", "3"),
         r"bootstrap"),
    Case("collect from a binary prompt file", ("collect", "--model", "smollm2", "--prompts", "{binary}", "--out",
                                               "{new}"), r"not UTF-8 text"),
    Case("collect with a truncated .gguf", ("collect", "--model", "{gguf}", "--out", "{new}"),
         r"not a readable GGUF model"),
    Case("harvest over a truncated traces part", ("harvest", "{run}", "--layer", "1"), r"is corrupt.*collect",
         prepare="a trace part is truncated"),
    Case("neighbours from truncated SAE weights", ("features", "{run}", "neighbors", "0"), r"corrupt",
         prepare="sae weights are truncated"),
    Case("neighbours from a cfg.json without d_in", ("features", "{run}", "neighbors", "0"), r"cfg.json: d_in: field",
         prepare="cfg.json lacks d_in"),
    Case("neighbours from a SAELens cfg.json without d_in", ("features", "{run}", "neighbors", "0"), r"lacks 'd_in'",
         prepare="a SAELens cfg.json lacks d_in"),
    Case("index with an SAE trained on another model", ("index", "{run}"), r"trained on .* --allow-other-model",
         prepare="the SAE comes from another model"),
    Case("eval with an SAE trained on another model", ("eval", "{run}"), r"trained on .* --allow-other-model",
         prepare="the SAE comes from another model"),
    Case("explain-text with an SAE trained on another model", ("features", "{run}", "explain-text", "two plus two"),
         r"trained on .* --allow-other-model", prepare="the SAE comes from another model"),
    Case("collect a model from an empty directory", ("collect", "--model", "{empty}", "--out", "{new}"), r"empty"),
    Case("collect from a prompt file that does not exist", ("collect", "--model", "smollm2", "--prompts",
                                                            "{empty}/missing.jsonl", "--out", "{new}"), r"missing"),
    Case("collect a negative number of prompts", ("collect", "--model", "smollm2", "--limit", "-1", "--out", "{new}"),
         r"limit"),
    Case("collect with zero new tokens", ("collect", "--model", "smollm2", "--max-new-tokens", "0", "--out", "{new}"),
         r"max_new_tokens"),
    Case("harvest a layer the model lacks", ("harvest", "{run}", "--layer", "99"), r"layer 99",
         prepare="the activations are removed"),
    Case("harvest into zero-token shards", ("harvest", "{run}", "--layer", "1", "--shard-tokens", "0"),
         r"shard_tokens"),
    Case("train an SAE of expansion 0", ("train", "{run}", "--expansion", "0"), r"expansion"),
    Case("train with a negative batch", ("train", "{run}", "--batch-size", "-5"), r"batch_size"),
    Case("train an architecture that does not exist", ("train", "{run}", "--arch", "transcoder"), r"arch"),
    Case("index keeping no examples", ("index", "{run}", "--top", "0"), r"top"),
    Case("eval a run without an SAE", ("eval", "{run}"), r"run `thinklens train", prepare="the SAE is removed"),
    Case("index a run without activations", ("index", "{run}"), r"run `thinklens harvest",
         prepare="the activations are removed"),
    Case("map a run without a feature database", ("map", "{run}"), r"run `thinklens index",
         prepare="features.db is removed"),
    Case("sweep at strengths that are not numbers", ("sweep", "{run}", "--feature", "0", "--strengths", "a,b"),
         r"strengths"),
    Case("sweep with an unknown position policy", ("sweep", "{run}", "--feature", "0", "--policy", "sometimes"),
         r"sometimes"),
    Case("steer a negative feature id", ("steer", "{run}", "--feature", "-3", "--strength", "2", "--prompt", "2+2?"),
         r"feature: .*greater than or equal to 0"),
    Case("contrast with an empty selector", ("contrast", "{run}", "--a", "", "--b", "operator=*"), r"selector"),
    Case("an option the command lacks", ("train", "{run}", "--colour", "red"), r"No such option.*train --help"),
    Case("a number that is not one", ("train", "{run}", "--lr", "fast"), r"Invalid value for '--lr'"),
    Case("show without a feature id", ("features", "{run}", "show"), r"Missing argument.*features RUN show --help"),
    Case("run from a stage that does not exist", ("run", "--from", "nonsense", "--out", "{run}"), r"nonsense"),
    Case("run a config file that does not exist", ("run", "--config", "{empty}/missing.yaml", "--out", "{run}"), r"missing.yaml"),
    Case("run a config that is not YAML", ("run", "--config", "{badyaml}", "--out", "{run}"), r"YAML"),
    Case("run a config with an unknown setting", ("run", "--config", "{unknown_yaml}", "--out", "{run}"), r"colour"),
    Case("neighbours from a cfg.json without d_sae", ("features", "{run}", "neighbors", "0"), r"cfg.json.*d_sae",
         prepare="cfg.json lacks d_sae"),
    Case("harvest over a corrupted traces part", ("harvest", "{run}", "--layer", "1", "--shard-tokens", "600"), r"is corrupt.*collect",
         prepare="a trace part is corrupted"),
    Case("train a run whose run.yaml is broken", ("train", "{run}", "--min-steps", "5"), r"run.yaml is not valid YAML "
         r"\(.* at line \d+, column \d+\): fix or remove it", prepare="run.yaml is broken"),
    Case("serve a directory that is no run", ("serve", "{empty}"), r"no feature database .*run `thinklens index"),
    Case("serve nothing", ("serve",), r"nothing to serve"),
    Case("serve a release database that is text", ("serve", "--ddb", "{file}"), r"not a readable DuckDB database"),
    Case("serve two runs of one name", ("serve", "{run}", "{run}"), r"share a directory name"),
    Case("serve on a port that does not exist", ("serve", "{run}", "--port", "70000"), r"port"),
    Case("contrast over a deleted activation shard", ("contrast", "{run}", "--a", "operator=*", "--b", "operator!=*"),
         r"missing or truncated: run `thinklens harvest", prepare="an activation shard is deleted"),
]


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes, and every directory's path, under `root` (the
    run's lock file aside): an empty directory left behind changes it too."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.name != LOCK_NAME):
        content = path.read_bytes() if path.is_file() else b"<dir>" if path.is_dir() else b"<other>"
        digest.update(str(path.relative_to(root)).encode() + b"\0" + content)
    return digest.hexdigest()


def _prepare(run: Path, fault: str | None) -> None:
    import json

    cfg = run / "sae" / "cfg.json"
    if fault == "a trace part is truncated":
        part = sorted((run / "traces").glob("part-*.parquet"))[0]
        part.write_bytes(part.read_bytes()[:200])
    elif fault == "sae weights are truncated":
        weights = run / "sae" / "sae_weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif fault == "cfg.json lacks d_sae":
        data = json.loads(cfg.read_text())
        del data["thinklens"]["d_sae"]
        data.pop("d_sae", None)
        cfg.write_text(json.dumps(data))
    elif fault == "a trace part is corrupted":
        import pyarrow.parquet as pq

        part = sorted((run / "traces").glob("part-*.parquet"))[0]
        columns = pq.read_metadata(part).row_group(0)
        tokens = next(columns.column(i) for i in range(columns.num_columns)
                      if columns.column(i).path_in_schema.startswith("token_ids"))
        data = bytearray(part.read_bytes())
        middle = tokens.data_page_offset + tokens.total_compressed_size // 2
        data[middle: middle + 64] = bytes(64)  # zeros inside the token ids' page, the footer intact
        part.write_bytes(bytes(data))
        shutil.rmtree(run / "activations")  # so that harvest reads every part
    elif fault in ("the SAE is removed", "the activations are removed"):
        shutil.rmtree(run / fault.split()[1].replace("SAE", "sae"))
    elif fault == "run.yaml is broken":
        (run / "run.yaml").write_text("stages: {train: [\n")
    elif fault == "features.db is removed":
        (run / "features.db").unlink()
    elif fault == "cfg.json lacks d_in":
        data = json.loads(cfg.read_text())
        del data["thinklens"]["d_in"]
        cfg.write_text(json.dumps(data))
    elif fault == "a SAELens cfg.json lacks d_in":
        data = json.loads(cfg.read_text())
        data.pop("thinklens")
        data.pop("d_in", None)
        cfg.write_text(json.dumps(data))
    elif fault == "the SAE comes from another model":
        data = json.loads(cfg.read_text())
        data["thinklens"].update(model="another/model", model_fingerprint="0123456789abcdef")
        cfg.write_text(json.dumps(data))
    elif fault == "an activation shard is deleted":
        sorted((run / "activations").glob("layers.*/shard-*.bin"))[-1].unlink()
    elif fault == "features.db is text":
        (run / "features.db").write_text("not a database\n")
    elif fault == "features.db is truncated":
        data = (run / "features.db").read_bytes()
        (run / "features.db").write_bytes(data[: len(data) // 3])


def _error_lines(output: str) -> list[str]:
    """What the command printed besides progress (bars, and transformers' loading lines)."""
    return [line for line in output.splitlines()
            if line.strip() and not line.startswith(("Loading", "Writing")) and "━" not in line]


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.name for case in CATALOGUE])
def test_bad_input_gives_one_line_exit_2_and_changes_nothing(case, indexed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(indexed_run, run)
    _prepare(run, case.prepare)
    plain_file = tmp_path / "a-file"
    plain_file.write_text("keep me\n")
    binary = tmp_path / "prompts.jsonl"
    binary.write_bytes(b'{"prompt": "\xff\xfe\x00 not text"}\n')
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(40))  # a header, then nothing
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.yaml").write_text("harvest: [layers: {\n")
    (tmp_path / "unknown.yaml").write_text("harvest:\n  layers: [1]\n  colour: red\n")
    before = tree_digest(tmp_path)
    argv = [part.format(run=run, file=plain_file, new=tmp_path / "new-run", binary=binary, gguf=gguf,
                        empty=tmp_path / "empty", badyaml=tmp_path / "bad.yaml", unknown_yaml=tmp_path / "unknown.yaml")
            for part in case.argv]
    result = CliRunner().invoke(app, argv)
    lines = _error_lines(result.output)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert re.search(case.message, lines[0]), lines[0]
    assert tree_digest(tmp_path) == before  # nothing written, nothing removed
    assert not (tmp_path / "new-run").exists() and not Path("/tmp/escaped").exists()


def test_a_second_writer_is_refused_with_the_holder_named(indexed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(indexed_run, run)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom thinklens.pipeline.lock import run_lock\n"
        "with run_lock(sys.argv[1], 'index'):\n    print('held', flush=True)\n    time.sleep(60)\n"), str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_digest(run)
        result = CliRunner().invoke(app, ["contrast", str(run), "--a", "operator=*", "--b", "operator!=*"])
        assert result.exit_code == 2
        assert re.search(rf"is being written by `thinklens index` \(pid {holder.pid}", result.output), result.output
        assert tree_digest(run) == before
    finally:
        holder.kill()
        holder.wait()
    # Killed, the holder's lock went with it: the next writer takes the run without a word.
    result = CliRunner().invoke(app, ["contrast", str(run), "--a", "operator=*", "--b", "operator!=*",
                                      "--bootstrap", "20"])
    assert result.exit_code == 0, result.output


def test_a_killed_writers_temp_files_are_removed_by_the_next_writer(indexed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(indexed_run, run)
    stale = [run / ".tmp-features.db.k1ll3d", run / "sae" / ".tmp-sae_weights.safetensors.x"]
    for path in stale:
        path.write_bytes(b"half a file")
    result = CliRunner().invoke(app, ["contrast", str(run), "--a", "operator=*", "--b", "operator!=*",
                                      "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in stale)


def test_a_run_directory_named_with_uri_characters_opens(indexed_run, tmp_path):
    run = tmp_path / "exp#1?x"
    shutil.copytree(indexed_run, run)
    result = CliRunner().invoke(app, ["features", str(run), "show", "0"])
    assert result.exit_code == 0, result.output
    assert "feature 0" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp#1?x"]  # no stray file beside it


def test_search_text_is_matched_literally(indexed_run):
    from thinklens.features.db import FeatureDB

    with FeatureDB(Path(indexed_run) / "features.db") as db:
        everything = db.n_features
        assert len(db.search("%", limit=everything)) < everything  # '%' is a character, not "anything"
        assert len(db.search("_", limit=everything)) < everything


def test_collect_retried_after_a_bad_model_is_not_refused(tiny_models, tmp_path):
    out = tmp_path / "run"
    bad = CliRunner().invoke(app, ["collect", "--model", str(tmp_path / "missing-model"), "--out", str(out),
                                   "--prompts", "arithmetic", "--limit", "2", "--max-new-tokens", "4"])
    assert bad.exit_code == 2 and not out.exists()
    good = CliRunner().invoke(app, ["collect", "--model", str(tiny_models["llama"]), "--out", str(out),
                                    "--prompts", "arithmetic", "--limit", "2", "--max-new-tokens", "4"])
    assert good.exit_code == 0, good.output


def _without_write_override(argv: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI where permission bits hold: as root, without CAP_DAC_OVERRIDE (root otherwise writes
    through any mode); as anyone else, as is."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without util-linux's setpriv to drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override"]
    return subprocess.run([*prefix, sys.executable, "-c", "from thinklens.cli import main; main()", *argv],
                          env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120)


def test_a_read_only_run_directory_is_refused_before_any_work(indexed_run, tiny_models, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(indexed_run, run)
    directories = [run, *[p for p in run.rglob("*") if p.is_dir()]]
    before = tree_digest(run)
    for directory in directories:
        os.chmod(directory, 0o555)
    try:
        refused = _without_write_override(["contrast", str(run), "--a", "operator=*", "--b", "operator!=*"])
        assert refused.returncode == 2, refused.stderr
        assert _error_lines(refused.stderr) == [f"error: {run} is not writable (permission denied): pass a run "
                                                "directory you can write to, or fix its permissions"]
        new = _without_write_override(["collect", "--model", str(tiny_models["llama"]), "--out", str(run / "new"),
                                       "--prompts", "arithmetic", "--limit", "2"])
        assert new.returncode == 2 and "cannot create the run directory" in new.stderr, new.stderr
        assert "Loading weights" not in new.stderr  # refused before the model loaded
    finally:
        for directory in directories:
            os.chmod(directory, 0o755)
    assert tree_digest(run) == before


def test_harvest_redoes_a_deleted_shard_to_the_same_bytes(indexed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(indexed_run, run)
    shard = sorted((run / "activations").glob("layers.*/shard-*.bin"))[-1]
    original, before = shard.read_bytes(), tree_digest(run / "activations")
    shard.unlink()
    result = CliRunner().invoke(app, ["harvest", str(run), "--layer", "1", "--shard-tokens", "600"])
    assert result.exit_code == 0, result.output
    assert shard.read_bytes() == original
    assert tree_digest(run / "activations") == before


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 1 MiB (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or made.returncode})")
    yield mount
    unmounted = subprocess.run(["umount", str(mount)], capture_output=True)
    if unmounted.returncode != 0:  # a file left open under it: detach it anyway, then say so
        subprocess.run(["umount", "-l", str(mount)], check=False)
        pytest.fail(f"the tmpfs stayed busy after the test (a file left open): {unmounted.stderr!r}")


def _fill(disk: Path, leave: int) -> None:
    """Take all but `leave` bytes of the disk's free space."""
    free = shutil.disk_usage(disk).free
    (disk / "ballast").write_bytes(bytes(max(0, free - leave)))


def test_a_harvest_the_disk_cannot_hold_is_refused_with_the_space_it_needs(indexed_run, small_disk):
    run = small_disk / "run"
    run.mkdir()
    shutil.copytree(Path(indexed_run) / "traces", run / "traces")
    _fill(small_disk, leave=64 * 1024)  # the activations take ~570 KB
    before = tree_digest(run)
    result = CliRunner().invoke(app, ["harvest", str(run), "--layer", "1", "--shard-tokens", "600"])
    lines = _error_lines(result.output)
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert re.search(r"harvest needs ~[\d.]+ KB .* free", lines[0]), lines[0]
    assert tree_digest(run) == before and not (run / "activations").exists()


def test_a_disk_filling_up_during_index_is_one_line_and_leaves_no_half_database(indexed_run, small_disk):
    run = small_disk / "run"
    run.mkdir()
    for part in ("traces", "activations", "sae"):
        shutil.copytree(Path(indexed_run) / part, run / part)
    _fill(small_disk, leave=48 * 1024)  # the database takes ~210 KB
    before = tree_digest(run)
    result = CliRunner().invoke(app, ["index", str(run)])
    lines = _error_lines(result.output)
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "disk is full" in lines[0] and "run the same command again" in lines[0]
    assert tree_digest(run) == before
    assert not [p for p in run.rglob(".tmp-*")] and not (run / "features.db").exists()


def test_an_sae_of_another_model_is_used_when_asked(indexed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(indexed_run, run)
    _prepare(run, "the SAE comes from another model")
    result = CliRunner().invoke(app, ["features", str(run), "explain-text", "two plus two", "--allow-other-model"])
    assert result.exit_code == 0, result.output


# A link in the run that leads out of it is read through (shared inputs) but never written through. The
# linked artifact is moved elsewhere (another run's, say), or elsewhere is empty where marked "empty".
ESCAPES = [
    ("collect", "empty traces", ("collect", "--model", "{llama}", "--out", "{run}", "--prompts", "arithmetic", "--limit",
                           "30", "--max-new-tokens", "32", "--batch-size", "12")),
    ("harvest", "empty activations", ("harvest", "{run}", "--layer", "1", "--shard-tokens", "600")),
    ("train", "empty sae", ("train", "{run}", "--arch", "topk", "--expansion", "2", "--k", "4", "--min-steps", "5")),
    ("label", "features.db", ("label", "{run}", "--force")),
    ("contrast", "features.db", ("contrast", "{run}", "--a", "operator=*", "--b", "operator!=*", "--bootstrap", "20")),
    ("analyze", "empty analysis", ("analyze", "{run}")),
    ("sweep", "empty sweeps", ("sweep", "{run}", "--feature", "0", "--strengths", "0,2", "--prompts", "1",
                         "--max-new-tokens", "4")),
    ("eval", "sae", ("eval", "{run}")),
    ("map", "empty analysis", ("map", "{run}")),
    ("report", "empty analysis", ("report", "{run}")),
]


@pytest.mark.parametrize("link, argv", [(link, argv) for _, link, argv in ESCAPES],
                         ids=[f"{stage} through a linked {link}" for stage, link, _ in ESCAPES])
def test_a_stage_never_writes_through_a_link_out_of_the_run(link, argv, indexed_run, tiny_models, tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    shutil.copytree(indexed_run, run)
    elsewhere.mkdir()
    empty, _, link = link.rpartition(" ")
    target = elsewhere / link
    if empty:
        shutil.rmtree(run / link, ignore_errors=True)
        target.mkdir()  # the stage has everything to write
    else:
        shutil.move(run / link, target)
    (run / link).symlink_to(target)
    before = tree_digest(tmp_path)
    result = CliRunner().invoke(app, [part.format(run=run, llama=tiny_models["llama"]) for part in argv])
    lines = _error_lines(result.output)
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert re.search(r"refusing to write .* outside the run directory .*replace the link with a copy", lines[0])
    assert tree_digest(tmp_path) == before
    assert (run / link).is_symlink()


def test_linked_inputs_are_read_through_and_outputs_land_inside_the_run(indexed_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("traces", "activations", "sae"):
        (run / name).symlink_to(Path(indexed_run) / name)
    shared = tree_digest(Path(indexed_run))
    result = CliRunner().invoke(app, ["index", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "features.db").is_file() and not (run / "features.db").is_symlink()
    assert tree_digest(Path(indexed_run)) == shared
