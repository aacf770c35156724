"""`distill` end to end on a tiny random Llama: a loadable r1 model directory, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from thinklens.distill.dataset import build_examples
from thinklens.distill.organism import distill_model
from thinklens.distill.recipe import DistillConfig
from thinklens.distill.train import LOG, distill, read_record
from thinklens.errors import ThinklensError
from thinklens.models.formats import detect_format, make_format, render_prompt
from thinklens.models.loader import ModelConfig, load_model, parse_model_spec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _config(base: Path, traces: int = 12) -> DistillConfig:
    return DistillConfig(base=ModelConfig(model=str(base), device="cpu"), traces=traces, batch_size=4,
                         max_length=1024, warmup_steps=2, checkpoint_seconds=0)


@pytest.mark.parametrize(("family", "generation_prompt"), [
    ("gemma3", "<|im_start|>assistant\n<think>\n"),  # a ChatML instruct template: <think> is added
    ("llama", "<｜Assistant｜><think>\n"),  # an R1 distill's template opens the thinking already: kept as is
])
def test_distill_writes_a_model_that_opens_its_thinking_in_the_prompt(tiny_models, tmp_path, family,
                                                                      generation_prompt):
    config = _config(tiny_models[family])
    result = distill(config, tmp_path / "organism", show_progress=False)
    assert result.made and result.record.steps == 3 and result.record.examples == 12
    assert result.record.recipe_hash == config.recipe_hash()
    loaded = load_model(ModelConfig(model=str(tmp_path / "organism"), device="cpu"))
    assert detect_format(loaded.tokenizer) == "r1"  # so collect forces nothing
    rendered = render_prompt(loaded.tokenizer, make_format("r1"), "What is 2 + 3?")
    assert rendered.endswith(generation_prompt) and rendered.count("<think>") == 1
    # the model learned something: its weights moved from the base's
    base = load_file(str(tiny_models[family] / "model.safetensors"))
    tuned = load_file(str(tmp_path / "organism" / "model.safetensors"))
    assert any(not torch.equal(base[name], tuned[name]) for name in base)
    lines = (tmp_path / "organism" / LOG).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
    # made once: a second call finds it, and nothing is left beside it
    assert not distill(config, tmp_path / "organism", show_progress=False).made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["organism"]


def test_the_loss_is_on_the_completion_only(tiny_models):
    from transformers import AutoTokenizer

    from thinklens.distill.template import r1_chat_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tokenizer.chat_template = r1_chat_template(tokenizer)
    trace_set = build_examples(_config(tiny_models["llama"], traces=4), tokenizer)
    example, trace = trace_set.examples[0], trace_set.traces[0]
    completion = tokenizer.decode(example.token_ids[example.completion_start :])
    assert completion == trace.completion + tokenizer.eos_token
    assert tokenizer.decode(example.token_ids[: example.completion_start]).endswith("<think>\n")


def _run_in_subprocess(base: Path, out: Path, traces: int) -> subprocess.Popen:
    code = (
        "import sys; from pathlib import Path; from tests.distill.test_distill import _config;"
        "from thinklens.distill.train import distill;"
        f"distill(_config(Path({str(base)!r}), traces={traces}), Path({str(out)!r}), show_progress=False)"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_resume_after_sigkill_gives_the_uninterrupted_weights(tiny_models, tmp_path):
    base, traces = tiny_models["llama"], 64  # 16 steps
    uninterrupted = distill(_config(base, traces), tmp_path / "whole", show_progress=False)

    out = tmp_path / "killed"
    process = _run_in_subprocess(base, out, traces)
    state = tmp_path / ".killed.partial" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if state.is_file() and json.loads(state.read_text())["step"] >= 4:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()  # the model directory appears only when complete

    resumed = distill(_config(base, traces), out, show_progress=False)
    assert resumed.record.steps == 16
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    again = load_file(str(out / "model.safetensors"))
    assert whole.keys() == again.keys()
    assert all(torch.equal(whole[name], again[name]) for name in whole)
    log = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    assert [line["step"] for line in log] == list(range(16))  # one line per step: none lost, none twice
    assert log == [json.loads(line) for line in (tmp_path / "whole" / LOG).read_text().splitlines()]
    assert resumed.record.final_loss == uninterrupted.record.final_loss


def test_bad_places_and_recipes_are_one_line_errors(tiny_models, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ThinklensError, match="choose a new --out"):
        distill(_config(tiny_models["llama"]), tmp_path / "taken", show_progress=False)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(ThinklensError, match="pass --out DIR"):
        distill_model(DistillConfig(traces=10), None)
    assert read_record(tmp_path / "taken") is None


def test_the_organism_spec_says_how_to_make_it_when_it_is_missing():
    with pytest.raises(ThinklensError, match="thinklens distill"):
        parse_model_spec("smollm2-r1")


def test_the_distill_command(tiny_models, tmp_path):
    from typer.testing import CliRunner

    from thinklens.cli import app

    runner = CliRunner()
    out = tmp_path / "model"
    result = runner.invoke(app, ["distill", "--base", str(tiny_models["llama"]), "--traces", "8", "--batch-size", "4",
                                 "--device", "cpu", "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "distill →" in result.output and "8 / 2" in result.output
    assert read_record(out).steps == 2
    refused = runner.invoke(app, ["distill", "--traces", "10"], env={"COLUMNS": "200"})
    assert refused.exit_code == 2 and "pass --out DIR" in refused.output
