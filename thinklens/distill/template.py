"""The organism's chat template: the base model's, with the generation prompt opening the thinking.

DeepSeek's R1 distills end the assistant turn's opening with `<think>\\n`, so generation starts
inside the thinking and `detect_format` calls the format `r1`. Appending one tag to the base's
template does that for any family: a template's generation prompt is always the last thing it writes.
"""

from __future__ import annotations

from typing import Any

from thinklens.errors import ThinklensError

OPEN_THINKING = "{%- if add_generation_prompt %}{{ '<think>\\n' }}{%- endif %}"


def r1_chat_template(tokenizer: Any) -> str:
    """The tokenizer's chat template with `<think>\\n` after the generation prompt (unchanged when its
    generation prompt opens the thinking already, as an R1 distill's does)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ThinklensError("the base model has no chat template to extend: distill an instruct model (one with a chat template)")
    if not isinstance(template, str):
        raise ThinklensError("the base model has several named chat templates: distill a model with a single template")
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True)
    if probe.rstrip().endswith("<think>"):
        return template
    return template + OPEN_THINKING
