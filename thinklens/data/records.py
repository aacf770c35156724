"""The records every prompt source produces and every later stage reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PromptRecord(BaseModel):
    """One prompt, whatever it came from (a built-in set, a file, a Hugging Face dataset)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    sequence_id: int = Field(description="Position of the prompt in its set; stable for a given set and seed.")
    prompt_id: str = Field(description="Readable id, e.g. 'arithmetic-000017' or the source's own id.")
    source: str = Field(description="Name of the set or file the prompt came from.")
    prompt: str = Field(description="The user's message, before any chat template.")
    answer: str | None = Field(default=None, description="Reference answer when the set has one.")
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Set-specific facts, e.g. {'operator': '*', 'operators': ['*', '+'], 'steps': 2}.",
    )
    completion: str | None = Field(
        default=None,
        description="A reasoning trace that came with the data (e.g. OpenR1-Math `generations`), to import.",
    )
