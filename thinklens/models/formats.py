"""Reasoning chat formats: how to render a prompt for a model, and where its thinking starts and ends.

- `r1`: DeepSeek-R1 and its distills. The chat template's generation prompt already ends with
  `<think>\\n` (older templates did not; we add it), so the model starts inside the thinking.
- `qwen3`: Qwen3 in thinking mode (and QwQ-style models). The model writes `<think>` itself.
- `think`: any instruct model that is not a reasoning model. A system message asks for reasoning
  inside `<think>…</think>` and then an answer; generation starts inside the think block after a
  forced opening, "Okay, so" by default: instruct models do not write the reasoning models' opening
  by themselves, and without it their traces have no prefix to study or to steer after.
- `chat`: an instruct model as it ships: its own template, no thinking. Not for traces (there is no
  thinking to study); for a model that does another job, such as `serve --model` for an explainer.

`detect_format` picks one from the tokenizer's chat template and special tokens.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from thinklens.errors import ThinklensError

FormatName = Literal["r1", "qwen3", "think", "chat"]
FORMAT_NAMES: tuple[str, ...] = ("r1", "qwen3", "think", "chat")

THINK_FORCED_OPENING = "Okay, so"
THINK_INSTRUCTION = (
    "You are a careful assistant. First think step by step inside <think> and </think> tags. "
    "After </think>, give the final answer on its own line."
)


class ReasoningFormat(BaseModel):
    """How a prompt is rendered and how the thinking is delimited."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: FormatName = Field(description="r1, qwen3, think or chat.")
    open_tag: str = Field(default="<think>", description="Text that opens the thinking.")
    close_tag: str = Field(default="</think>", description="Text that closes the thinking.")
    forced_opening: str = Field(
        default="", description="Text placed after the open tag before generation starts (e.g. 'Okay, so')."
    )
    system_prompt: str | None = Field(default=None, description="System message; `think` defaults to an instruction.")

    @property
    def opens_in_prompt(self) -> bool:
        """Whether the rendered prompt already contains the open tag (r1, think); in qwen3 the model writes it,
        and chat has none."""
        return self.name in ("r1", "think")


def make_format(name: str, forced_opening: str | None = None, system_prompt: str | None = None) -> ReasoningFormat:
    """A format by name; `think` defaults to its instruction and to the forced opening "Okay, so"."""
    if name not in FORMAT_NAMES:
        raise ThinklensError(f"unknown reasoning format '{name}': use one of {', '.join(FORMAT_NAMES)}")
    if forced_opening is None:
        forced_opening = THINK_FORCED_OPENING if name == "think" else ""
    if forced_opening and name in ("qwen3", "chat"):
        raise ThinklensError("a forced opening needs a format whose prompt opens the thinking: use --format r1 or think")
    if name == "think" and system_prompt is None:
        system_prompt = THINK_INSTRUCTION
    return ReasoningFormat(name=name, forced_opening=forced_opening, system_prompt=system_prompt)


def detect_format(tokenizer: Any) -> FormatName:
    """r1 if the generation prompt opens the thinking, qwen3 if the model has a `<think>` token, else think."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return "think"
    try:
        rendered = _apply_template(tokenizer, [{"role": "user", "content": "1+1?"}])
    except Exception:  # a template that cannot render a bare user turn tells us nothing
        return "think"
    if rendered.rstrip().endswith("<think>"):
        return "r1"
    vocabulary = tokenizer.get_vocab()
    if "<think>" in vocabulary and "</think>" in vocabulary and "<think>" in template:
        return "qwen3"
    return "think"


def render_prompt(tokenizer: Any, fmt: ReasoningFormat, prompt: str) -> str:
    """The exact text given to the model for one user prompt, ending where generation starts."""
    return render_messages(tokenizer, fmt, [{"role": "user", "content": prompt}])


def render_messages(tokenizer: Any, fmt: ReasoningFormat, messages: list[dict[str, str]]) -> str:
    """The exact text given to the model for a conversation (the format's system prompt first unless
    the conversation has its own), ending where the assistant's turn starts."""
    messages = list(messages)
    if fmt.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": fmt.system_prompt})
    if not getattr(tokenizer, "chat_template", None):
        if fmt.name not in ("think", "chat"):
            raise ThinklensError(f"this model has no chat template, so format '{fmt.name}' cannot render: use --format think")
        rendered = _plain_template(tokenizer, messages)
    else:
        rendered = _apply_template(tokenizer, messages)
    if fmt.opens_in_prompt and not rendered.rstrip().endswith(fmt.open_tag):
        rendered += fmt.open_tag + "\n"
    return rendered + fmt.forced_opening


def _apply_template(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    except Exception:
        if messages[0]["role"] != "system":
            raise
        # Some templates (Gemma) reject a system turn: fold the instruction into the user's message.
        merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}, *messages[2:]]
        return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True, enable_thinking=True)


def _plain_template(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """A minimal rendering for base models without a chat template."""
    bos = tokenizer.bos_token or ""
    turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
    return f"{bos}{turns}Assistant: "
