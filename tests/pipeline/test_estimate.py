"""`thinklens run --dry-run`: each stage's plan from the settings alone, nothing run or written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from thinklens.errors import ThinklensError
from thinklens.pipeline import RunConfig
from thinklens.pipeline.estimate import plan_run

ROOT = Path(__file__).resolve().parents[2]


def test_the_plan_is_the_settings_arithmetic(tiny_models):
    config = RunConfig.model_validate({
        "collect": {"model": str(tiny_models["qwen2"]), "limit": 100, "generation": {"max_new_tokens": 36},
                    "workers": 2},
        "harvest": {"layers": [0, 1], "dtype": "float32"},
        "train": {"expansion": 4, "epochs": 2, "arch": "topk", "nproc": 2},
        "index": {"top": 10, "quantile_samples": 2},
        "sweep": {"skip": True},
        "plan": {"throughput": {"collect": 50, "harvest": 1000}},
    })
    plans = {plan.stage: plan for plan in plan_run(config)}
    tokens = 100 * (64 + 36)  # a 64-token prompt + max_new_tokens: the bound when trace_tokens is not given
    d_model = 64  # read from the tiny model's config.json
    assert plans["collect"].tokens == tokens and plans["collect"].where.startswith("2 worker(s)")
    assert plans["collect"].seconds == pytest.approx(tokens / (50 * 2))
    assert plans["harvest"].bytes_written == tokens * (d_model * 2 * 4 + 64)  # two float32 layers + the index
    assert plans["harvest"].seconds == pytest.approx(tokens / 1000)
    assert plans["train"].tokens == 2 * tokens and plans["train"].seconds is None  # no rate given: no time
    assert plans["train"].bytes_written == 4 * (2 * d_model * 4 * d_model * 4)  # untied, float32, + checkpoint
    assert plans["index"].bytes_written == pytest.approx(tokens * 13.4 + 4 * d_model * (12 * 21.1 + 415))
    assert "sweep" not in plans and list(plans)[:5] == ["collect", "harvest", "train", "eval", "index"]


def test_a_hub_model_not_on_this_machine_asks_for_its_width():
    config = RunConfig.model_validate({"collect": {"model": "org/not-cached", "limit": 10}, "harvest": {"layers": [3]}})
    harvest = {plan.stage: plan for plan in plan_run(config)}["harvest"]
    assert harvest.bytes_written is None and harvest.note == "set plan.d_model"


def test_a_config_run_would_refuse_is_refused():
    with pytest.raises(ThinklensError, match="harvest"):
        plan_run(RunConfig.model_validate({"collect": {"limit": 10}}))


def test_the_r1_plan_prints_the_figures_docs_scale_derives(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "thinklens", "run", "--config", str(ROOT / "configs/r1-671b.yaml"),
                            "--out", str(tmp_path / "run"), "--dry-run"], capture_output=True, text=True,
                           env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "521,000,000" in shown.stdout and "7.5 TB" in shown.stdout and "7.0 GB" in shown.stdout
    assert "derived in docs/scale.md" in shown.stdout
    assert not (tmp_path / "run").exists() and list(tmp_path.iterdir()) == []  # nothing written
