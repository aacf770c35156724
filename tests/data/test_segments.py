"""Segmentation from token offsets: prompt / prefix / thinking / answer on R1, Qwen3 and think traces."""

from __future__ import annotations

import pytest

from thinklens.data.segments import (
    ANSWER,
    PREFIX,
    PROMPT,
    THINKING,
    PrefixConfig,
    segment_trace,
    token_char_spans,
)
from thinklens.models.formats import make_format, render_prompt

QUESTION = "What is 2 + 3?"


def _trace(tokenizer, fmt, completion: str, question: str = QUESTION):
    """Token ids of a rendered prompt followed by a completion, and where the completion starts."""
    prompt_ids = tokenizer(render_prompt(tokenizer, fmt, question), add_special_tokens=False).input_ids
    completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
    return prompt_ids + completion_ids, len(prompt_ids)


def _segment_texts(tokenizer, fmt, completion, prefix: PrefixConfig | None = None, question=QUESTION):
    ids, start = _trace(tokenizer, fmt, completion, question)
    trace = segment_trace(tokenizer, ids, start, fmt, prefix or PrefixConfig())
    labels = trace.segments.labels()
    texts = {
        name: tokenizer.decode([t for t, code in zip(ids, labels, strict=True) if code == value])
        for name, value in (("prompt", PROMPT), ("prefix", PREFIX), ("thinking", THINKING), ("answer", ANSWER))
    }
    return trace, texts


def test_r1_template_full_trace(tokenizers):
    tok, fmt = tokenizers["r1"], make_format("r1")
    completion = "Okay, so the user asks for 2 + 3. Adding gives 5.\n</think>\n\nThe answer is 5."
    trace, texts = _segment_texts(tok, fmt, completion)
    # The R1 generation prompt ends with "<think>\n": all of it is prompt; the model starts in the thinking.
    assert texts["prompt"].endswith("<｜Assistant｜><think>\n")
    assert texts["prefix"] == "Okay, so the user asks for 2 + 3."
    assert texts["thinking"] == " Adding gives 5.\n</think>"
    assert texts["answer"] == "\n\nThe answer is 5."
    segments = trace.segments
    assert segments.prompt_end == segments.generation_start == segments.prefix_start
    assert segments.thinking_closed and segments.prefix_matched and not segments.prefix_truncated


def test_qwen3_template_model_writes_the_open_tag(tokenizers):
    tok, fmt = tokenizers["qwen3"], make_format("qwen3")
    completion = "<think>\nAlright, let me add. 2 + 3 = 5.\n</think>\n\n**5**<|im_end|>"
    trace, texts = _segment_texts(tok, fmt, completion)
    assert texts["prompt"].endswith("<|im_start|>assistant\n")
    # The generated "<think>\n" is thinking; the prefix starts at the first word of the thinking.
    assert texts["thinking"].startswith("<think>\n") and texts["thinking"].endswith("5.\n</think>")
    assert texts["prefix"] == "Alright, let me add."
    assert texts["answer"] == "\n\n**5**<|im_end|>"
    assert trace.segments.prompt_end == trace.segments.generation_start < trace.segments.prefix_start


def test_no_close_tag_everything_generated_is_thinking(tokenizers):
    tok, fmt = tokenizers["r1"], make_format("r1")
    trace, texts = _segment_texts(tok, fmt, "Hmm, this goes on. And on and on")
    assert not trace.segments.thinking_closed
    assert trace.segments.thinking_end == trace.segments.n_tokens
    assert texts["prefix"] == "Hmm, this goes on."
    assert texts["answer"] == ""


def test_empty_thinking(tokenizers):
    tok, fmt = tokenizers["r1"], make_format("r1")
    trace, texts = _segment_texts(tok, fmt, "\n</think>\n\n5")
    assert texts["prefix"] == ""
    assert texts["thinking"] == "\n</think>"
    assert texts["answer"] == "\n\n5"
    assert not trace.segments.prefix_matched


def test_answer_only_when_qwen3_skips_thinking(tokenizers):
    tok, fmt = tokenizers["qwen3"], make_format("qwen3")
    trace, texts = _segment_texts(tok, fmt, "The answer is 5.<|im_end|>")
    assert not trace.segments.has_thinking
    assert texts["prefix"] == texts["thinking"] == ""
    assert texts["answer"] == "The answer is 5.<|im_end|>"


def test_prefix_longer_than_cap_is_truncated_in_tokens(tokenizers):
    tok, fmt = tokenizers["r1"], make_format("r1")
    long_opening = "Okay, so " + "the user has asked a question about arithmetic and " * 5 + "more."
    trace, texts = _segment_texts(tok, fmt, long_opening + " Then 5.</think>5", prefix=PrefixConfig(max_tokens=6))
    segments = trace.segments
    # The match runs to "more." but only the first 6 tokens are kept as prefix.
    assert segments.prefix_matched and segments.prefix_truncated
    assert segments.prefix_end - segments.prefix_start == 6
    assert texts["prefix"].startswith("Okay, so") and long_opening.startswith(texts["prefix"])


def test_no_match_gives_empty_prefix(tokenizers):
    tok, fmt = tokenizers["r1"], make_format("r1")
    trace, texts = _segment_texts(tok, fmt, "2 + 3 = 5.</think>5")
    assert not trace.segments.prefix_matched
    assert texts["prefix"] == "" and texts["thinking"] == "2 + 3 = 5.</think>"


def test_unicode_split_across_tokens_keeps_segments_whole(tokenizers):
    tok, fmt = tokenizers["r1"], make_format("r1")
    completion = "Okay, 日本語 🙂 ÷ résumé.\n日本語 thinking 🙂</think>答え 🙂"
    ids, start = _trace(tok, fmt, completion, question="日本語 🙂?")
    text, spans = token_char_spans(tok, ids)
    # Byte-level BPE splits these characters across tokens; the spans still tile the exact decoded text.
    assert text == tok.decode(ids)
    assert [end for _, end in spans][-1] == len(text)
    assert all(a_end == b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    assert any(start == end for start, end in spans), "expected at least one partial-character token"
    trace, texts = _segment_texts(tok, fmt, completion, question="日本語 🙂?")
    assert texts["prefix"] == "Okay, 日本語 🙂 ÷ résumé."
    assert texts["thinking"] == "\n日本語 thinking 🙂</think>"
    assert texts["answer"] == "答え 🙂"


def test_forced_opening_is_prefix_not_prompt(tokenizers):
    tok, fmt = tokenizers["chatml"], make_format("think", forced_opening="Okay, so")
    trace, texts = _segment_texts(tok, fmt, " the user wants 2 + 3. It is 5.</think>\n5<|im_end|>")
    segments = trace.segments
    assert texts["prompt"].endswith("<think>\n")
    assert texts["prefix"] == "Okay, so the user wants 2 + 3."
    # The forced tokens sit before the generation start but belong to the prefix.
    assert segments.prefix_start == segments.prompt_end < segments.generation_start < segments.prefix_end


def test_labels_layout_worked_example():
    from thinklens.data.segments import Segments

    # 10 tokens: prompt 0-2, a generated tag 3, prefix 4-5, thinking 6-7, answer 8-9.
    segments = Segments(10, 3, 3, 4, 6, 8, True, True, True, False)
    assert segments.labels().tolist() == [0, 0, 0, 2, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("template", ["r1", "qwen3", "chatml"])
def test_every_token_gets_one_segment_in_order(tokenizers, template):
    tok = tokenizers[template]
    fmt = make_format({"r1": "r1", "qwen3": "qwen3", "chatml": "think"}[template])
    opening = "<think>\n" if template == "qwen3" else ""
    ids, start = _trace(tok, fmt, opening + "So we add. 5</think> 5")
    labels = segment_trace(tok, ids, start, fmt, PrefixConfig()).segments.labels()
    assert len(labels) == len(ids)
    # Segments come in order (a generated qwen3 tag is thinking before the prefix, so allow 2 → 1 once).
    order = [int(code) for i, code in enumerate(labels) if i == 0 or code != labels[i - 1]]
    assert order in ([PROMPT, PREFIX, THINKING, ANSWER], [PROMPT, THINKING, PREFIX, THINKING, ANSWER])
