"""The pipeline end to end on a tiny model, from Python and through `thinklens run`: every stage,
the report in headless Chromium, resume, re-labelling, --from."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.browser import dump_dom
from thinklens.activations.harvest import HarvestConfig
from thinklens.analysis.findings import VERDICTS
from thinklens.cli import app
from thinklens.pipeline import STAGE_NAMES, RunConfig, RunDir, load_run_config, run, run_stage
from thinklens.pipeline.lock import LOCK_NAME
from thinklens.pipeline.report import SECTIONS

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def _tiny_config(model: Path, out: Path) -> dict:
    """A small run config: natural YAML types (`strengths: [0, 4]`), nested sections, and a few flat
    option names (`max_new_tokens`, `layer`), the form run.yaml format 1 recorded."""
    return {
        "out": str(out),
        "collect": {"model": str(model), "prompts": "arithmetic+logic", "limit": 12, "max_new_tokens": 24,
                    "generation": {"batch_size": 12}},
        "harvest": {"layer": [1], "shard_tokens": 600},
        "train": {"arch": "topk", "expansion": 2, "k": 4, "batch_size": 128, "min_steps": 40},
        "eval": {"lm_sequences": 2},
        "index": {"top": 8},
        "analyze": {"sinks": {"traces": 2}, "bootstrap": 20},
        "findings": {"swap": {"prompts": 2, "max_new_tokens": 8, "strengths": [0, 4]},
                     "brevity": {"prompts": 2, "max_new_tokens": 8, "strengths": [0, 4], "bootstrap": 100}},
        "map": {"n_neighbors": 5},
        "sweep": {"strengths": [0, 4], "policies": ["after_prefix"], "prompts": 2, "samples": 1,
                  "max_new_tokens": 8},
    }


@pytest.fixture(scope="module")
def piped_run(tiny_models, tmp_path_factory) -> tuple[Path, Path, list]:
    """The whole pipeline, run from Python (no CLI) on the tiny random llama."""
    root = tmp_path_factory.mktemp("pipeline")
    out = root / "run"
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(_tiny_config(tiny_models["llama"], out)))
    results = run(load_run_config(config), progress=False)
    return out, config, results


@pytest.mark.slow
def test_run_from_python_makes_every_artifact_and_records_the_config(piped_run):
    out, config, results = piped_run
    did_work = {name for name, result in zip(STAGE_NAMES, results, strict=True) if not result.skipped}
    assert did_work == set(STAGE_NAMES) - {"label"}  # index writes the heuristic labels itself
    rundir = RunDir(out)
    for path in (rundir.report_html, rundir.map_html, rundir.map_png, rundir.features_db, rundir.eval_json,
                 rundir.analysis_json("shift")):
        assert path.is_file(), path
    findings = json.loads(rundir.findings_json.read_text())["result"]
    assert [f["claim"] for f in findings["findings"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(f["verdict"] in VERDICTS and f["reason"] and f["command"] for f in findings["findings"])
    record = rundir.record()
    assert record.config["collect"]["limit"] == 12 and record.config["collect"]["generation"]["max_new_tokens"] == 24
    assert set(record.stages) >= {"collect", "harvest", "train", "eval", "index", "analyze", "map", "sweep"}
    assert "report" not in record.stages  # run.yaml is one of the report's inputs
    again = load_run_config(rundir.run_yaml)  # run.yaml re-runs the same config
    assert again.harvest == HarvestConfig(layers=(1,), shard_tokens=600)
    assert again == load_run_config(config).model_copy(update={"out": out})


@pytest.mark.slow
def test_second_python_call_does_no_work(piped_run):
    out, config, _ = piped_run
    # Every artifact; the lock file is written by whoever takes the run, work or not.
    mtimes = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file() and path.name != LOCK_NAME}
    results = run(load_run_config(config), progress=False)
    assert [result.skipped for result in results] == [True] * len(STAGE_NAMES), [r.headline for r in results]
    assert {path: path.stat().st_mtime_ns for path in mtimes} == mtimes  # not one file rewritten


@pytest.mark.slow
def test_report_renders_every_section_and_image_in_headless_chromium(piped_run):
    out, _, _ = piped_run
    html = (out / "report.html").read_text()
    assert "https://" not in html and "http://" not in html  # self-contained
    images = len(re.findall(r"<img ", html))
    assert images >= 6  # findings, prefix, sinks, shift, map, and the sweep's behaviour + coherence
    assert "Findings: the R1 study" in html
    dom = dump_dom(out / "report.html")
    for section in SECTIONS:
        assert f'id="{section}"' in dom, section
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert f'data-images-loaded="{images}"' in body and 'data-images-broken="0"' in body, body


@pytest.mark.slow
def test_relabelling_redoes_exactly_the_stages_that_show_labels(piped_run):
    out, config, _ = piped_run
    rundir = RunDir(out)
    with sqlite3.connect(rundir.features_db) as connection:  # a researcher corrects one label by hand
        feature = connection.execute("SELECT min(feature_id) FROM autointerp").fetchone()[0]
        connection.execute("UPDATE autointerp SET label = 'edited by hand', model_name = 'human' WHERE feature_id = ?",
                           (feature,))
    assert run_stage("label", {}, rundir, progress=False).skipped  # every feature still has a label
    results = dict(zip(STAGE_NAMES, run(load_run_config(config), progress=False), strict=True))
    # findings read shift.json, which shows labels
    assert {name for name, result in results.items() if not result.skipped} == {"analyze", "findings", "map", "report"}
    assert results["analyze"].resolved == {"written": ["shift"], "up_to_date": ["prefix", "sinks"]}
    assert "edited by hand" in rundir.analysis_json("map").read_text()


@pytest.mark.slow
def test_cli_run_is_the_same_run_and_from_forces_the_rest(piped_run):
    out, config, _ = piped_run
    report_mtime = (out / "report.html").stat().st_mtime_ns
    again = _invoke("run", "--config", str(config))
    assert again.exit_code == 0, again.output
    for number, stage in enumerate(STAGE_NAMES, start=1):
        assert f"{number}/{len(STAGE_NAMES)} {stage}" in again.output
    lines = again.output.lower()
    assert lines.count("nothing to do") + lines.count("up to date") >= len(STAGE_NAMES) - 1, again.output
    assert f"report.html: {out / 'report.html'}" in again.output.replace("\n", "")
    assert (out / "report.html").stat().st_mtime_ns == report_mtime
    traces_mtime = (out / "traces").stat().st_mtime_ns
    shift_mtime = (out / "analysis" / "shift.json").stat().st_mtime_ns
    forced = _invoke("run", "--config", str(config), "--from", "analyze")
    assert forced.exit_code == 0, forced.output
    assert "--from analyze: removed" in forced.output
    assert (out / "analysis" / "shift.json").stat().st_mtime_ns != shift_mtime
    assert (out / "traces").stat().st_mtime_ns == traces_mtime


@pytest.mark.slow
def test_stage_commands_read_their_section_of_the_config(piped_run, tmp_path):
    out, config, _ = piped_run
    evaluated = _invoke("eval", "--config", str(config))  # RUN from `out:`, lm_sequences 2 from the section
    assert evaluated.exit_code == 0 and "nothing to do" in evaluated.output, evaluated.output
    other = _invoke("eval", "--config", str(config), "--lm-sequences", "3", str(out))
    assert other.exit_code == 0 and "nothing to do" not in other.output  # the command line wins


def test_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    out = tmp_path / "never-written"
    bad.write_text(f"out: {out}\ncolect: {{limit: 3}}\n")
    result = _invoke("run", "--config", str(bad))
    assert result.exit_code == 2 and "unknown section(s) colect" in result.output
    bad.write_text(f"out: {out}\ncollect: {{limitt: 3}}\n")
    result = _invoke("run", "--config", str(bad))
    assert result.exit_code == 2 and "unknown option(s) limitt in section 'collect'" in result.output
    bad.write_text(f"out: {out}\ncollect: {{generation: {{temprature: 1}}}}\n")
    result = _invoke("run", "--config", str(bad))
    assert result.exit_code == 2 and "invalid setting collect.generation.temprature" in result.output
    result = _invoke("run", "--config", str(bad), "--from", "nowhere")
    assert result.exit_code == 2
    missing = _invoke("run", "--config", str(tmp_path / "none.yaml"))
    assert missing.exit_code == 2 and "no run config" in missing.output
    no_layer = tmp_path / "no-layer.yaml"
    no_layer.write_text(f"out: {out}\n")
    result = _invoke("run", "--config", str(no_layer))
    assert result.exit_code == 2 and "stage 'harvest' needs layers" in result.output
    with pytest.raises(Exception, match="stage 'harvest' needs layers"):
        run(RunConfig(out=out))  # the same check from Python
    assert not out.exists()  # bad input writes nothing


def test_flat_and_nested_sections_are_the_same_config(tmp_path):
    flat = tmp_path / "flat.yaml"  # run.yaml format 1 recorded the CLI's option names
    flat.write_text("out: r\ncollect: {model: smollm2, max_new_tokens: 64, device: cpu}\nharvest: {layer: [3]}\n"
                    "analyze: {sink_traces: 4}\nsweep: {strengths: '0,2,8', policy: 'first_token,after_prefix'}\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("out: r\ncollect: {model: {model: smollm2, device: cpu}, generation: {max_new_tokens: 64}}\n"
                      "harvest: {layers: [3]}\nanalyze: {sinks: {traces: 4}}\n"
                      "sweep: {strengths: [0, 2, 8], policies: [first_token, after_prefix]}\n")
    assert load_run_config(flat) == load_run_config(nested)
    old = tmp_path / "run.yaml"  # a format-1 run.yaml: its `config` is followed
    old.write_text("format_version: 1\nconfig: {out: r, harvest: {layer: [3]}}\nstages: {}\n")
    assert load_run_config(old).harvest.layers == (3,)


def test_reference_config_is_current_and_every_shipped_config_is_valid():
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("config_reference", root / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Rendered from RunConfig: a library default changed without `make docs` fails here.
    assert module.REFERENCE.read_text() == module.render(), "run `python scripts/config_reference.py --write`"
    for config in sorted((root / "configs").glob("*.yaml")):
        load_run_config(config)  # raises on a misspelt section, option or value
    reference = load_run_config(module.REFERENCE)  # the reference is exactly the defaults
    assert reference == RunConfig(out=Path("runs/my-run"), harvest={"layers": [15]})
