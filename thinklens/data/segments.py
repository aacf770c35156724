"""Segmentation: every token of a trace belongs to one of `prompt`, `prefix`, `thinking`, `answer`.

Segments are decided on the characters of the decoded trace and mapped back to tokens through each
token's character span, computed by incremental decoding of the very token ids the model saw or
wrote. Pieces are never re-tokenised, so the token boundaries are exactly the model's.

Layout of a trace (token indices, half-open):

    [0, prompt_end)              prompt    the rendered chat template (for r1/think up to the open tag)
    [prompt_end, prefix_start)   thinking  a generated open tag (qwen3 only; empty otherwise)
    [prefix_start, prefix_end)   prefix    the opening: "Okay, so the user has asked ..." (may be empty)
    [prefix_end, thinking_end)   thinking  the rest of the thinking, close tag included
    [thinking_end, n_tokens)     answer    what follows the close tag

A forced opening ("Okay, so" placed in the prompt by the `think` format) is part of the prefix even
though the model did not write it; `generation_start` records where the model took over.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from thinklens.models.formats import ReasoningFormat

SEGMENT_NAMES: tuple[str, ...] = ("prompt", "prefix", "thinking", "answer")
PROMPT, PREFIX, THINKING, ANSWER = range(4)

DEFAULT_PREFIX_PATTERN = (
    r"(?:Okay|OK|Ok|Alright|All right|So|Hmm+|Well|Let me|Let's|First)\b"
    r"[^\n]*?(?:[.!?](?=\s|$|<)|(?=\n)|$)"
)


class PrefixConfig(BaseModel):
    """How the opening prefix of a thinking trace is found."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    pattern: str = Field(
        default=DEFAULT_PREFIX_PATTERN,
        description="Regex matched at the start of the thinking (after whitespace); the match is the prefix.",
    )
    max_tokens: int = Field(default=48, ge=1, description="Cap on the prefix length in tokens.")

    def compiled(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


@dataclass(frozen=True)
class Segments:
    """Token boundaries of one trace's segments (see the module docstring for the layout)."""

    n_tokens: int
    generation_start: int
    prompt_end: int
    prefix_start: int
    prefix_end: int
    thinking_end: int
    has_thinking: bool
    thinking_closed: bool
    prefix_matched: bool
    prefix_truncated: bool

    def labels(self) -> np.ndarray:
        """One segment code per token (0 prompt, 1 prefix, 2 thinking, 3 answer)."""
        codes = np.full(self.n_tokens, ANSWER, dtype=np.uint8)
        codes[: self.thinking_end] = THINKING
        codes[self.prefix_start : self.prefix_end] = PREFIX
        codes[: self.prompt_end] = PROMPT
        return codes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SegmentedTrace:
    """A trace's segments with the decoded text they were computed on."""

    segments: Segments
    text: str
    token_starts: tuple[int, ...]  # character where each token starts in `text`

    def text_of(self, start_token: int, end_token: int) -> str:
        """The text of tokens [start_token, end_token)."""
        return self.text[self._char(start_token) : self._char(end_token)]

    def _char(self, token: int) -> int:
        return self.token_starts[token] if token < len(self.token_starts) else len(self.text)


def token_char_spans(tokenizer: Any, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decode `token_ids` incrementally: the text and each token's (start, end) character span.

    A token that ends inside a multi-byte character gets an empty span at the character's start; the
    token that completes the character carries it. The text is the concatenation of the spans.
    """
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    window_start = 0  # tokens [window_start, read_end) decode to text already emitted
    read_end = 0
    emitted = ""
    for i in range(len(token_ids)):
        window_text = tokenizer.decode(token_ids[window_start : i + 1], skip_special_tokens=False)
        if len(window_text) > len(emitted) and not window_text.endswith("\ufffd"):
            delta = window_text[len(emitted) :]
            # Slide the window so each decode stays short; keep one token of context for tokenizers
            # (SentencePiece) whose leading-space handling depends on the previous token.
            window_start = read_end
            read_end = i + 1
            emitted = tokenizer.decode(token_ids[window_start : i + 1], skip_special_tokens=False)
        else:
            delta = ""
        pieces.append(delta)
        spans.append((length, length + len(delta)))
        length += len(delta)
    # Tokens that never completed a character (invalid bytes at the very end) decode to U+FFFD: the
    # last token carries whatever the pending window decodes to, so the text equals a plain decode.
    tail = tokenizer.decode(token_ids[window_start:], skip_special_tokens=False)[len(emitted) :] if spans else ""
    if tail:
        pieces.append(tail)
        last_start, _ = spans[-1]
        spans[-1] = (last_start if last_start < length else length, length + len(tail))
    return "".join(pieces), spans


def segment_trace(
    tokenizer: Any,
    token_ids: Sequence[int],
    generation_start: int,
    fmt: ReasoningFormat,
    prefix: PrefixConfig,
) -> SegmentedTrace:
    """Segment one trace: `token_ids` is prompt + completion, the model took over at `generation_start`.

    A token belongs to the segment of its first character, except that the prefix starts at the token
    holding the thinking's first non-space character.
    """
    text, spans = token_char_spans(tokenizer, token_ids)
    n_tokens = len(token_ids)
    starts = np.array([start for start, _ in spans], dtype=np.int64)
    ends = np.array([end for _, end in spans], dtype=np.int64)

    def first_starting_at(char: int) -> int:
        return int(np.searchsorted(starts, char, side="left"))

    def first_touching(char: int) -> int:
        """The token holding `char` (or a partial-character token just before it)."""
        return min(first_starting_at(char), int(np.searchsorted(ends, char, side="right")))

    generation_char = int(starts[generation_start]) if generation_start < n_tokens else len(text)
    tag_end = _thinking_open_end(text, generation_char, fmt)
    if tag_end is None:  # no thinking at all: everything generated is the answer
        g = generation_start
        return SegmentedTrace(Segments(n_tokens, g, g, g, g, g, False, False, False, False), text, tuple(starts.tolist()))

    close_at = text.find(fmt.close_tag, tag_end)
    thinking_closed = close_at >= 0
    content_stop = close_at if thinking_closed else len(text)
    content_char = tag_end + (len(text[tag_end:content_stop]) - len(text[tag_end:content_stop].lstrip()))
    thinking_end = first_starting_at(close_at + len(fmt.close_tag)) if thinking_closed else n_tokens

    prefix_start = min(first_touching(content_char), thinking_end)
    prompt_end = min(prefix_start, generation_start)
    match = prefix.compiled().match(text, content_char, content_stop)
    prefix_matched = match is not None and match.end() > content_char
    prefix_end, truncated = prefix_start, False
    if prefix_matched:
        prefix_end = max(prefix_start, min(first_starting_at(match.end()), thinking_end))
        if prefix_end - prefix_start > prefix.max_tokens:
            prefix_end, truncated = prefix_start + prefix.max_tokens, True
    segments = Segments(
        n_tokens=n_tokens,
        generation_start=generation_start,
        prompt_end=prompt_end,
        prefix_start=prefix_start,
        prefix_end=prefix_end,
        thinking_end=thinking_end,
        has_thinking=True,
        thinking_closed=thinking_closed,
        prefix_matched=prefix_matched,
        prefix_truncated=truncated,
    )
    return SegmentedTrace(segments, text, tuple(starts.tolist()))


def _thinking_open_end(text: str, generation_char: int, fmt: ReasoningFormat) -> int | None:
    """Character just after the open tag, or None when the trace has no thinking."""
    if fmt.opens_in_prompt:
        open_at = text.rfind(fmt.open_tag, 0, generation_char)
        return open_at + len(fmt.open_tag) if open_at >= 0 else generation_char
    generated = text[generation_char:]
    stripped = generated.lstrip()
    if stripped.startswith(fmt.open_tag):
        return generation_char + (len(generated) - len(stripped)) + len(fmt.open_tag)
    if fmt.close_tag in generated:  # the model skipped the open tag but closed its thinking
        return generation_char
    return None
