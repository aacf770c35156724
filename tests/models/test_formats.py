"""Reasoning formats: detection from the tokenizer, and the exact text given to the model."""

from __future__ import annotations

import pytest

from thinklens.errors import ThinklensError
from thinklens.models.formats import THINK_INSTRUCTION, detect_format, make_format, render_prompt


def test_detects_each_format(tokenizers):
    assert detect_format(tokenizers["r1"]) == "r1"
    assert detect_format(tokenizers["qwen3"]) == "qwen3"
    assert detect_format(tokenizers["chatml"]) == "think"


def test_r1_prompt_ends_inside_the_thinking(tokenizers):
    text = render_prompt(tokenizers["r1"], make_format("r1"), "What is 2 + 3?")
    assert text == "<｜begin▁of▁sentence｜><｜User｜>What is 2 + 3?<｜Assistant｜><think>\n"


def test_qwen3_prompt_leaves_the_open_tag_to_the_model(tokenizers):
    text = render_prompt(tokenizers["qwen3"], make_format("qwen3"), "What is 2 + 3?")
    assert text == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"


def test_think_prompt_asks_for_thinking_and_forces_the_opening(tokenizers):
    text = render_prompt(tokenizers["chatml"], make_format("think"), "What is 2 + 3?")
    assert text.startswith(f"<|im_start|>system\n{THINK_INSTRUCTION}<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n<think>\nOkay, so")
    plain = render_prompt(tokenizers["chatml"], make_format("think", forced_opening=""), "Q")
    assert plain.endswith("<think>\n")


def test_r1_appends_the_tag_when_an_old_template_lacks_it(tokenizers):
    old = tokenizers["qwen3"]  # a template whose generation prompt does not open the thinking
    assert render_prompt(old, make_format("r1"), "Q").endswith("<|im_start|>assistant\n<think>\n")


def test_template_less_model_only_renders_think(tokenizers):
    import copy

    bare = copy.deepcopy(tokenizers["chatml"])
    bare.chat_template = None
    assert detect_format(bare) == "think"
    assert render_prompt(bare, make_format("think"), "Q").endswith("User: Q\n\nAssistant: <think>\nOkay, so")
    with pytest.raises(ThinklensError, match="no chat template, so format 'r1' cannot render: use --format think"):
        render_prompt(bare, make_format("r1"), "Q")


def test_bad_format_requests():
    with pytest.raises(ThinklensError, match="unknown reasoning format 'o1'"):
        make_format("o1")
    with pytest.raises(ThinklensError, match="forced opening needs"):
        make_format("qwen3", forced_opening="Okay")
