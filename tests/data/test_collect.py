"""Trace collection on tiny random models: segmented traces, resume, refusal to mix runs, import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from thinklens.data.collect import CollectConfig, GenerationConfig, collect
from thinklens.data.traces import TraceStore
from thinklens.errors import ThinklensError
from thinklens.models.loader import ModelConfig

pytestmark = pytest.mark.integration


def _config(model_dir, limit: int, prompts: str = "arithmetic", greedy: bool = False, batch_size: int = 4):
    return CollectConfig(
        model=ModelConfig(model=str(model_dir), device="cpu"),
        prompts=prompts,
        limit=limit,
        generation=GenerationConfig(max_new_tokens=10, batch_size=batch_size, greedy=greedy),
    )


def test_collect_writes_segmented_traces_and_reruns_do_nothing(tiny_models, tmp_path):
    config = _config(tiny_models["qwen2"], limit=6)
    result = collect(config, tmp_path / "traces", show_progress=False)
    assert (result.n_written, result.n_skipped, result.format) == (6, 0, "r1")
    assert 6 <= result.generated_tokens <= 60
    table = TraceStore(tmp_path / "traces").read()
    rows = table.to_pylist()
    assert [row["sequence_id"] for row in rows] == list(range(6))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    for row in rows:
        assert row["n_tokens"] == len(row["token_ids"])
        assert row["text"] == tokenizer.decode(row["token_ids"])
        assert row["text"].endswith(row["completion"])
        assert row["prompt_end"] <= row["prefix_start"] <= row["prefix_end"] <= row["thinking_end"] <= row["n_tokens"]
        assert row["generation_start"] == row["prompt_end"]  # r1: the prompt ends with "<think>\n"
        assert row["finish_reason"] in {"eos", "length"}
        assert json.loads(row["metadata"])["operator"] in {"+", "-", "*", "/"}
    again = collect(config, tmp_path / "traces", show_progress=False)
    assert (again.n_written, again.n_skipped, again.format) == (0, 6, None)  # None: the model was never loaded


def test_growing_the_limit_only_generates_the_new_prompts(tiny_models, tmp_path):
    collect(_config(tiny_models["qwen2"], limit=4), tmp_path / "a", show_progress=False)
    grown = collect(_config(tiny_models["qwen2"], limit=10), tmp_path / "a", show_progress=False)
    assert (grown.n_written, grown.n_skipped) == (6, 4)
    # Same seeds per batch: the grown store equals one collected in a single run.
    collect(_config(tiny_models["qwen2"], limit=10), tmp_path / "b", show_progress=False)
    ids_a = TraceStore(tmp_path / "a").read(["token_ids"]).column(0).to_pylist()
    ids_b = TraceStore(tmp_path / "b").read(["token_ids"]).column(0).to_pylist()
    assert ids_a == ids_b


def test_batched_greedy_equals_one_prompt_at_a_time(tiny_models, tmp_path):
    # Prompts of different lengths are left-padded in a batch; padding must not change the output.
    collect(_config(tiny_models["llama"], limit=5, greedy=True, batch_size=5), tmp_path / "batched", show_progress=False)
    collect(_config(tiny_models["llama"], limit=5, greedy=True, batch_size=1), tmp_path / "single", show_progress=False)
    batched = TraceStore(tmp_path / "batched").read(["token_ids"]).column(0).to_pylist()
    single = TraceStore(tmp_path / "single").read(["token_ids"]).column(0).to_pylist()
    assert batched == single


def test_another_runs_traces_are_refused_and_left_untouched(tiny_models, tmp_path):
    collect(_config(tiny_models["qwen2"], limit=2), tmp_path / "traces", show_progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "traces").iterdir()}
    with pytest.raises(ThinklensError, match=r"holds traces of another run \(prompts: 'arithmetic', asked 'logic'\)"):
        collect(_config(tiny_models["qwen2"], limit=2, prompts="logic"), tmp_path / "traces", show_progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "traces").iterdir()} == before


def test_import_openr1_style_traces_without_generating(tiny_models, tmp_path):
    rows = [
        {"problem": "What is 2 + 3?", "answer": "5",
         "generations": ["<think>\nOkay, so we add 2 and 3. That makes 5.\n</think>\n\nThe answer is \\boxed{5}."]},
        {"problem": "What is 4 * 4?", "answer": "16",
         "generations": ["<think>\nHmm, 4 times 4 is 16.\n</think>\n\n\\boxed{15}"]},
    ]
    source = tmp_path / "openr1.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = CollectConfig(model=ModelConfig(model=str(tiny_models["qwen2"])), prompts=str(source), import_traces=True)
    result = collect(config, tmp_path / "traces", show_progress=False)
    assert result.n_written == 2
    traces = TraceStore(tmp_path / "traces").read().to_pylist()
    assert traces[0]["prefix_text"] == "Okay, so we add 2 and 3."
    assert traces[0]["answer"] == "5" and traces[0]["correct"] is True
    assert traces[1]["answer"] == "15" and traces[1]["correct"] is False
    # The R1 prompt already opens the thinking: the dataset's own "<think>" is not repeated.
    assert traces[0]["text"].count("<think>") == 1
    assert all(trace["finish_reason"] == "imported" for trace in traces)


def test_sigkill_loses_at_most_the_batch_in_flight(tiny_models, tmp_path):
    """Kill a real collection mid-run; the re-run completes it to exactly an uninterrupted run's traces."""
    args = [sys.executable, "-m", "thinklens.cli", "collect", "--model", str(tiny_models["qwen2"]), "--limit", "24",
            "--batch-size", "2", "--max-new-tokens", "40", "--device", "cpu"]
    env = {**os.environ, "COLUMNS": "100"}
    killed = tmp_path / "killed"
    process = subprocess.Popen([*args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((killed / "traces").glob("part-*.parquet"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    parts_at_kill = len(list((killed / "traces").glob("part-*.parquet")))
    assert 2 <= parts_at_kill < 12, "the kill should land mid-run"
    for part in (killed / "traces").glob("part-*.parquet"):
        pq.read_table(part)  # every part on disk is complete and readable
    subprocess.run([*args, "--out", str(killed)], env=env, check=True, capture_output=True)
    subprocess.run([*args, "--out", str(tmp_path / "whole")], env=env, check=True, capture_output=True)
    resumed = TraceStore(killed / "traces").read(["sequence_id", "token_ids"]).to_pylist()
    whole = TraceStore(tmp_path / "whole" / "traces").read(["sequence_id", "token_ids"]).to_pylist()
    assert len(resumed) == 24 and resumed == whole
    assert not list((killed / "traces").glob(".tmp-*"))


THINKING, ANSWER = "Okay, so we add 2 and 3. That makes 5.", "The answer is \\boxed{5}."
LAYOUTS = {  # one trace, in each layout a trace set ships it
    "openr1": {"problem": "What is 2 + 3?", "generations": [f"<think>\n{THINKING}\n</think>\n\n{ANSWER}"]},
    "r1-collect": {"question": "What is 2 + 3?", "response": f"<think>\n{THINKING}\n</think>\n\n{ANSWER}"},
    "api": {"question": "What is 2 + 3?", "reasoning_content": THINKING, "content": ANSWER},
    "messages": {"messages": [{"role": "user", "content": "What is 2 + 3?"},
                              {"role": "assistant", "content": f"<think>\n{THINKING}\n</think>\n\n{ANSWER}"}]},
    "messages-reasoning": {"messages": [{"role": "user", "content": "What is 2 + 3?"},
                                        {"role": "assistant", "content": ANSWER, "reasoning_content": THINKING}]},
}


@pytest.mark.parametrize("layout", sorted(set(LAYOUTS) - {"openr1"}))
def test_each_trace_set_layout_imports_the_same_segmented_trace(tiny_models, tmp_path, layout):
    def imported(name: str) -> dict:
        source = tmp_path / f"{name}.jsonl"
        source.write_text(json.dumps({**LAYOUTS[name], "answer": "5"}) + "\n")
        config = CollectConfig(model=ModelConfig(model=str(tiny_models["qwen2"])), prompts=str(source),
                               import_traces=True)
        collect(config, tmp_path / name / "traces", show_progress=False)
        return TraceStore(tmp_path / name / "traces").read().to_pylist()[0]

    reference, trace = imported("openr1"), imported(layout)
    same = ("token_ids", "generation_start", "prefix_start", "prefix_end", "thinking_end", "prefix_text",
            "answer_text", "answer", "correct")
    assert {key: trace[key] for key in same} == {key: reference[key] for key in same}
    assert trace["prefix_text"] == "Okay, so we add 2 and 3." and trace["answer"] == "5"
