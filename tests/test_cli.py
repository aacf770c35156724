"""The CLI through Typer's runner: exit codes, one-line errors, and the collect command end to end."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from thinklens.cli import app
from thinklens.data.traces import TraceStore

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def _linked_run(source: Path, tmp_path: Path, *names: str) -> Path:
    """A fresh run directory whose `names` link to `source`'s (new outputs land beside them); the feature
    database is copied, not linked, as stages add rows to it (contrasts) and the source is shared."""
    run = tmp_path / "run"
    run.mkdir()
    for name in names:
        if name == "features.db":
            shutil.copy2(source / name, run / name)
        else:
            (run / name).symlink_to(source / name)
    return run


def _error_line(result) -> str:
    """The one error line (transformers' weight-loading bar may come before it, never after)."""
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert len(lines) == 1, f"expected one error line, got: {result.output!r}"
    return lines[0]


def test_version_and_help():
    assert _invoke("--version").exit_code == 0
    result = _invoke("collect", "--help")
    assert result.exit_code == 0 and "--max-new-tokens" in result.output


def test_unknown_model_is_one_line_exit_2(tmp_path):
    result = _invoke("collect", "--model", "no such model", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert _error_line(result).startswith("error: unknown model spec 'no such model': use 'smollm2'")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("", "empty"),
        ('{"title": "x", "body": "y"}\n', "title"),  # columns it cannot map: the message names them
    ],
)
def test_bad_prompt_files_are_one_line_exit_2(tmp_path, content, message):
    path = tmp_path / "prompts.jsonl"
    if content is not None:
        path.write_text(content)
    result = _invoke("collect", "--prompts", str(path), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    line = _error_line(result)
    assert line.startswith("error:") and message in line


def test_invalid_setting_is_one_line(tmp_path):
    result = _invoke("collect", "--format", "o1", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert _error_line(result).startswith("error: invalid setting format:")


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "collect", "--model", "no such model", "--out", str(tmp_path)])
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "ThinklensError"


@pytest.mark.integration
def test_collect_writes_traces_records_the_run_and_refuses_another(tiny_models, tmp_path):
    run = tmp_path / "run"
    common = ["collect", "--model", str(tiny_models["qwen3"]), "--limit", "3", "--max-new-tokens", "8", "--out", str(run)]
    first = _invoke(*common)
    assert first.exit_code == 0, first.output
    assert "traces written / skipped" in first.output and "3 / 0" in first.output
    assert len(TraceStore(run / "traces")) == 3
    record = yaml.safe_load((run / "run.yaml").read_text())
    assert record["stages"]["collect"]["asked"]["limit"] == 3
    assert record["stages"]["collect"]["resolved"]["format"] == "qwen3"

    again = _invoke(*common)
    assert again.exit_code == 0 and "nothing to do: all 3 traces are already in" in again.output

    meta_before = (run / "traces" / "_meta.json").read_text()
    other = _invoke(*common, "--temperature", "1.0")
    assert other.exit_code == 2
    assert "holds traces of another run" in _error_line(other)
    assert (run / "traces" / "_meta.json").read_text() == meta_before
    assert json.loads(meta_before)["identity"]["generation"]["temperature"] == 0.6


def test_readme_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.current_block((ROOT / "README.md").read_text()) == module.render(), "run `make docs`"


def test_import_thinklens_is_quiet_and_light():
    import subprocess
    import sys

    code = (
        "import sys, thinklens; heavy = ('torch', 'transformers'); print(sorted(m for m in heavy if m in sys.modules)); "
        "import thinklens.cli; print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr == ""
    package, cli = result.stdout.splitlines()
    assert package == "[]"
    assert "transformers" not in cli, "the CLI must not import transformers before a command runs"


@pytest.mark.integration
def test_harvest_after_collect_and_its_errors(tiny_models, tmp_path):
    run = tmp_path / "run"
    assert _invoke("collect", "--model", str(tiny_models["llama"]), "--limit", "4", "--max-new-tokens", "6",
                   "--out", str(run)).exit_code == 0
    first = _invoke("harvest", str(run), "--layer", "1", "--layer", "0")
    assert first.exit_code == 0, first.output
    assert "massive-activation tokens" in first.output
    record = yaml.safe_load((run / "run.yaml").read_text())["stages"]
    assert set(record) == {"collect", "harvest"} and record["harvest"]["asked"]["layers"] == [1, 0]
    assert "nothing to do" in _invoke("harvest", str(run), "--layer", "1", "--layer", "0").output

    wrong_layer = _invoke("harvest", str(tmp_path / "other"), "--layer", "0")
    assert wrong_layer.exit_code == 2 and "run `thinklens collect" in _error_line(wrong_layer)
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "traces").symlink_to(run / "traces")
    too_deep = _invoke("harvest", str(tmp_path / "run2"), "--layer", "9")
    assert too_deep.exit_code == 2
    assert _error_line(too_deep) == "error: layer 9 does not exist: LlamaForCausalLM has layers 0..2"
    assert not (tmp_path / "run2" / "activations" / "manifest.json").exists()


@pytest.mark.integration
def test_train_then_eval_report_fvu_l0_dead_and_lm_loss(tiny_models, tmp_path):
    run = tmp_path / "run"
    assert _invoke("collect", "--model", str(tiny_models["llama"]), "--limit", "16", "--max-new-tokens", "24",
                   "--out", str(run)).exit_code == 0
    assert _invoke("harvest", str(run), "--layer", "1").exit_code == 0
    trained = _invoke("train", str(run), "--expansion", "2", "--k", "4", "--batch-size", "64", "--epochs", "2",
                      "--holdout-fraction", "0.3")
    assert trained.exit_code == 0, trained.output
    assert (run / "sae" / "cfg.json").is_file()
    again = _invoke("train", str(run), "--expansion", "2", "--k", "4", "--batch-size", "64", "--epochs", "2",
                    "--holdout-fraction", "0.3")
    assert again.exit_code == 0 and "nothing to do" in again.output
    weights = (run / "sae" / "sae_weights.safetensors").read_bytes()
    other = _invoke("train", str(run), "--expansion", "2", "--k", "5", "--batch-size", "64", "--epochs", "2",
                    "--holdout-fraction", "0.3")
    assert other.exit_code == 2 and "holds an SAE trained with other settings (k: 4, asked 5)" in _error_line(other)
    assert (run / "sae" / "sae_weights.safetensors").read_bytes() == weights
    evaluated = _invoke("eval", str(run), "--lm-sequences", "3")
    assert evaluated.exit_code == 0, evaluated.output
    for words in ("FVU", "L0", "dead", "dense", "loss recovered", "thinking"):
        assert words in evaluated.output
    report = json.loads((run / "sae" / "eval.json").read_text())["result"]  # the envelope's result
    assert 0 <= report["overall"]["fvu"] < 2 and report["overall"]["l0"] > 0
    assert 0 <= report["overall"]["dead_fraction"] <= report["segments"]["thinking"]["dead_fraction"] <= 1
    assert report["lm"]["zero_ablated"] > report["lm"]["clean"] > 0
    assert set(yaml.safe_load((run / "run.yaml").read_text())["stages"]) == {"collect", "harvest", "train", "eval"}

    wrong = tmp_path / "wrong"
    (wrong / "sae").mkdir(parents=True)
    (wrong / "activations").symlink_to(run / "activations")
    (wrong / "traces").symlink_to(run / "traces")
    from thinklens.sae.formats import save_sae
    from thinklens.sae.sae import Sae, SaeConfig

    save_sae(Sae(SaeConfig(arch="topk", d_in=128, d_sae=256, k=4)), wrong / "sae")
    mismatch = _invoke("eval", str(wrong))
    assert mismatch.exit_code == 2
    assert "the SAE reads vectors of width 128 but the activations in" in _error_line(mismatch)


@pytest.mark.integration
def test_index_and_feature_queries(indexed_run, tmp_path):
    run = _linked_run(indexed_run, tmp_path, "traces", "activations", "sae")
    result = _invoke("index", str(run), "--top", "8")
    assert result.exit_code == 0, result.output
    assert "bytes/token" in result.output and (run / "features.db").is_file()
    assert "nothing to do" in _invoke("index", str(run), "--top", "8").output
    shown = _invoke("features", str(run), "show", "0", "--top", "3")
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("feature 0") and "top logits:" in shown.output
    assert _invoke("features", str(run), "search", "").exit_code == 0
    close = _invoke("features", str(run), "neighbors", "0", "-n", "2")
    assert close.exit_code == 0 and len(close.output.strip().splitlines()) == 2
    explained = _invoke("features", str(run), "explain-text", "Okay, so 2 + 3")
    assert explained.exit_code == 0, explained.output
    missing = _invoke("features", str(run), "show", "123456")
    assert missing.exit_code == 2 and "feature 123456 does not exist" in _error_line(missing)
    no_db = _invoke("features", str(tmp_path), "show", "0")
    assert no_db.exit_code == 2 and "run `thinklens index" in _error_line(no_db)


@pytest.mark.integration
def test_index_refuses_a_foreign_sae_without_a_layer_until_given_one(indexed_run, tmp_path):
    from thinklens.sae.formats import load_sae, save_sae

    run = _linked_run(indexed_run, tmp_path, "traces", "activations")
    sae = load_sae(indexed_run / "sae")
    foreign = sae.__class__(sae.config.model_copy(update={"layer": None}))  # same width, no layer: a foreign file
    foreign.load_state_dict(sae.state_dict())
    save_sae(foreign, run / "sae")
    refused = _invoke("index", str(run), "--top", "8")
    assert refused.exit_code == 2
    assert "names no layer: pass --layer" in _error_line(refused) and "1" in _error_line(refused)
    assert not (run / "features.db").exists()
    wrong = _invoke("index", str(run), "--top", "8", "--layer", "0")
    assert wrong.exit_code == 2 and "layer 0 is not in" in _error_line(wrong)
    given = _invoke("index", str(run), "--top", "8", "--layer", "1")
    assert given.exit_code == 0, given.output
    assert (run / "features.db").is_file()


@pytest.mark.integration
def test_train_on_a_device_this_machine_lacks_is_one_line(indexed_run, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = _linked_run(indexed_run, tmp_path, "traces", "activations")
    result = _invoke("train", str(run), "--device", "cuda", "--k", "4", "--expansion", "2")
    assert result.exit_code == 2
    assert "CUDA is not available" in _error_line(result) and "--device cpu" in _error_line(result)
    assert not (run / "sae").exists()  # nothing written


def test_cli_states_no_default_of_its_own():
    """Every option of every command defaults to None (flags: None or False), so the library's default applies."""
    import ast

    from thinklens.pipeline.reference import render_reference

    source = (ROOT / "thinklens" / "cli.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                assert isinstance(default, ast.Constant) and default.value in (None, False), (
                    f"{node.name} has a default of its own: {ast.unparse(default)}")
    # No library default is restated: none of the reference config's numbers appears as a literal.
    numbers = {value for value in re.findall(r":\s(-?\d+\.\d+|\d{2,})$", render_reference(), re.M)}
    for module in ("cli.py", "cli_stages.py"):
        text = (ROOT / "thinklens" / module).read_text()
        restated = sorted(number for number in numbers if re.search(rf"(?<![\w.]){re.escape(number)}(?![\w.])", text))
        assert not restated, f"{module} restates library defaults {restated}"


def test_every_stage_option_sets_a_config_field_and_every_artifact_is_known():
    from thinklens.cli_stages import field_at
    from thinklens.pipeline import STAGES, RunDir

    rundir = RunDir("somewhere")
    for stage in STAGES:
        for option, path in stage.options.items():
            assert field_at(stage.config, path).description, (stage.name, option)
        for name in stage.reads + stage.writes:
            assert rundir.artifact(name).is_relative_to(rundir.root), (stage.name, name)


def test_code_shape_cli_is_thin_and_functions_are_short():
    import ast

    assert len((ROOT / "thinklens" / "cli.py").read_text().splitlines()) <= 350
    long = []
    for path in sorted((ROOT / "thinklens").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


@pytest.mark.integration
def test_steer_and_sweep_commands(indexed_run, tmp_path):
    run = _linked_run(indexed_run, tmp_path, "traces", "activations", "sae", "features.db")
    steered = _invoke("steer", str(run), "--feature", "0", "--strength", "50", "--prompt", "What is 2 + 3?",
                      "--max-new-tokens", "8", "--greedy", "--policy", "first_token")
    assert steered.exit_code == 0, steered.output
    assert "baseline" in steered.output and "steered" in steered.output and "token 0 of the response" in steered.output
    swept = _invoke("sweep", str(run), "--feature", "0", "--strengths", "0,8", "--prompts", "1", "--samples", "1",
                    "--max-new-tokens", "6")
    assert swept.exit_code == 0, swept.output
    assert "regime" in swept.output and (run / "sweeps" / "feature-0" / "behaviour.svg").is_file()
    bad = _invoke("sweep", str(run), "--feature", "0", "--policy", "sometimes")
    assert bad.exit_code == 2 and "unknown position policy 'sometimes'" in _error_line(bad)
    bad_numbers = _invoke("sweep", str(run), "--feature", "0", "--strengths", "1,two")
    assert bad_numbers.exit_code == 2 and "strengths must be numbers" in _error_line(bad_numbers)


@pytest.mark.integration
def test_analyze_and_map_commands(indexed_run, tmp_path):
    run = _linked_run(indexed_run, tmp_path, "traces", "activations", "sae", "features.db")
    analyzed = _invoke("analyze", str(run), "--sink-traces", "2", "--bootstrap", "20")
    assert analyzed.exit_code == 0, analyzed.output
    assert "where attention sinks sit" in analyzed.output and "Jensen" in analyzed.output
    for name in ("prefix", "sinks", "shift"):
        assert (run / "analysis" / f"{name}.json").is_file() and (run / "analysis" / f"{name}.png").is_file()
    again = _invoke("analyze", str(run), "--sink-traces", "2", "--bootstrap", "20")
    assert again.exit_code == 0 and "sinks: up to date" in again.output
    mapped = _invoke("map", str(run), "--n-neighbors", "5")
    assert mapped.exit_code == 0, mapped.output
    assert (run / "map.html").is_file() and (run / "map.png").is_file() and "dead (left out)" in mapped.output
    assert "nothing to do" in _invoke("map", str(run), "--n-neighbors", "5").output
    no_db = _invoke("map", str(tmp_path / "empty"))
    assert no_db.exit_code == 2 and "run `thinklens index" in _error_line(no_db)
