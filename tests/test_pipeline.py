"""`thinklens run` end to end on a tiny model: every stage, the report in headless Chromium, resume, --from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.browser import dump_dom
from thinklens.cli import app
from thinklens.pipeline import STAGES, load_run_config, stage_section
from thinklens.report import SECTIONS

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def _tiny_config(model: Path, out: Path) -> dict:
    return {
        "out": str(out),
        "collect": {"model": str(model), "prompts": "arithmetic+logic", "limit": 12, "max_new_tokens": 24,
                    "batch_size": 12},
        "harvest": {"layer": [1], "shard_tokens": 600},
        "train": {"arch": "topk", "expansion": 2, "k": 4, "batch_size": 128, "min_steps": 40},
        "eval": {"lm_sequences": 2},
        "index": {"top": 8},
        "analyze": {"sink_traces": 2, "bootstrap": 20},
        "map": {"n_neighbors": 5},
        "sweep": {"strengths": "0,4", "policy": "after_prefix", "prompts": 2, "samples": 1, "max_new_tokens": 8},
    }


@pytest.fixture(scope="module")
def piped_run(tiny_models, tmp_path_factory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("pipeline")
    run = root / "run"
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(_tiny_config(tiny_models["llama"], run)))
    result = _invoke("run", "--config", str(config))
    assert result.exit_code == 0, result.output
    return run, config, result.output


@pytest.mark.slow
def test_run_makes_every_artifact_and_records_the_config(piped_run):
    run, config, output = piped_run
    for number, stage in enumerate(STAGES, start=1):
        assert f"{number}/{len(STAGES)} {stage}" in output
    for name in ("report.html", "map.html", "map.png", "features.db", "sae/eval.json", "analysis/shift.json"):
        assert (run / name).is_file(), name
    assert f"report.html: {run / 'report.html'}" in output.replace("\n", "")
    recorded = yaml.safe_load((run / "run.yaml").read_text())
    assert recorded["config"]["collect"]["limit"] == 12 and set(recorded["stages"]) >= {"collect", "harvest", "train"}
    assert load_run_config(run / "run.yaml")["harvest"] == {"layer": [1], "shard_tokens": 600}  # run.yaml re-runs


@pytest.mark.slow
def test_report_renders_every_section_and_image_in_headless_chromium(piped_run):
    run, _, _ = piped_run
    html = (run / "report.html").read_text()
    assert "https://" not in html and "http://" not in html  # self-contained
    images = len(re.findall(r"<img ", html))
    assert images >= 5  # prefix, sinks, shift, map, and the sweep's behaviour + coherence
    dom = dump_dom(run / "report.html")
    for section in SECTIONS:
        assert f'id="{section}"' in dom, section
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert f'data-images-loaded="{images}"' in body and 'data-images-broken="0"' in body, body


@pytest.mark.slow
def test_second_run_does_no_work_and_from_forces_the_rest(piped_run):
    run, config, _ = piped_run
    report_mtime = (run / "report.html").stat().st_mtime_ns
    again = _invoke("run", "--config", str(config))
    assert again.exit_code == 0, again.output
    lines = again.output.lower()
    assert lines.count("nothing to do") + lines.count("up to date") >= len(STAGES) - 1, again.output
    assert (run / "report.html").stat().st_mtime_ns == report_mtime
    traces_mtime = (run / "traces").stat().st_mtime_ns
    shift_mtime = (run / "analysis" / "shift.json").stat().st_mtime_ns
    forced = _invoke("run", "--config", str(config), "--from", "analyze")
    assert forced.exit_code == 0, forced.output
    assert "--from analyze: removed" in forced.output
    assert (run / "analysis" / "shift.json").stat().st_mtime_ns != shift_mtime
    assert (run / "traces").stat().st_mtime_ns == traces_mtime


@pytest.mark.slow
def test_stage_commands_read_their_section_of_the_config(piped_run, tmp_path):
    run, config, _ = piped_run
    evaluated = _invoke("eval", "--config", str(config))  # RUN from `out:`, --lm-sequences 2 from the section
    assert evaluated.exit_code == 0 and "nothing to do" in evaluated.output, evaluated.output
    other = _invoke("eval", "--config", str(config), "--lm-sequences", "3", str(run))
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
    result = _invoke("run", "--config", str(bad), "--from", "nowhere")
    assert result.exit_code == 2
    missing = _invoke("run", "--config", str(tmp_path / "none.yaml"))
    assert missing.exit_code == 2 and "no run config" in missing.output
    no_layer = tmp_path / "no-layer.yaml"
    no_layer.write_text(f"out: {out}\n")
    result = _invoke("run", "--config", str(no_layer))
    assert result.exit_code == 2 and "stage 'harvest' needs layer" in result.output
    assert not out.exists()  # bad input writes nothing


def test_reference_config_is_current_and_every_shipped_config_is_valid():
    import importlib.util

    import typer.main

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("config_reference", root / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.REFERENCE.read_text() == module.render(), "run `python scripts/config_reference.py --write`"
    commands = typer.main.get_command(app).commands
    for config in sorted((root / "configs").glob("*.yaml")):
        document = load_run_config(config)
        for stage in STAGES:
            known = {param.name for param in commands[stage].params}
            stage_section(document, stage, known, config)  # raises on a misspelt option
    assert set(STAGES) - {"report"} <= set(load_run_config(module.REFERENCE))
