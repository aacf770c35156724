"""One prompt, unsteered and steered, with the same seed: what `thinklens steer` prints side by side."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thinklens.models.generate import Sampling
from thinklens.steering.engine import MAX_STRENGTH, check_policy


class SteerConfig(BaseModel):
    """One feature at one strength on one prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    feature: int = Field(ge=0, description="Feature to steer.")
    strength: float = Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH,
                            description="Strength (× the feature's typical max unless --absolute), at most 1000 in size.")
    prompt: str = Field(min_length=1, description="The user prompt.")
    policy: str = Field(default="after_prefix", description="Position policy: first_token, after_prefix, thinking, "
                                                            "answer or index:N.")
    mode: Literal["add", "clamp", "scale"] = Field(default="add", description="add, clamp or scale.")
    absolute: bool = Field(default=False, description="Strength is a raw activation.")
    max_new_tokens: int = Field(default=128, ge=1, description="Generated tokens.")
    seed: int = Field(default=0, description="Sampling seed (the same for both outputs).")
    greedy: bool = Field(default=False, description="Greedy decoding.")
    device: str = Field(default="auto", description="Where the model runs: 'auto' (cuda when available), 'cpu', "
                                                    "'cuda', ...")

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, policy: str) -> str:
        return check_policy(policy)


@dataclass
class Comparison:
    """The two completions, and from which response token the steered one was steered (None: never)."""

    baseline: str
    steered: str
    start: int | None


def steer_side_by_side(config: SteerConfig, traces_dir: Path, sae_dir: Path, db_path: Path) -> Comparison:
    """Generate the prompt's response without and with the edit, from the same seed."""
    from thinklens.steering.from_run import open_variant

    variant = open_variant(traces_dir, sae_dir, db_path, [config.feature], device=config.device)
    sampling = Sampling(greedy=config.greedy)
    (baseline,) = variant.generate([config.prompt], config.max_new_tokens, sampling, seed=config.seed)
    variant.set(config.feature, config.strength, policy=config.policy, mode=config.mode)
    variant.absolute = config.absolute
    (steered,) = variant.generate([config.prompt], config.max_new_tokens, sampling, seed=config.seed)
    start = None if math.isinf(steered.start) else int(steered.start) - steered.generation_start
    return Comparison(baseline.completion, steered.completion, start)
