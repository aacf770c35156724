"""The distillation recipe: a typed config whose hash names the model it makes."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thinklens.data.teacher import TEACHER_VERSION
from thinklens.models.loader import ModelConfig

HELD_OUT_PROMPTS = 1000  # the first N prompts of each held-out seed never appear in training


class DistillConfig(BaseModel):
    """How a base model is fine-tuned on teacher traces. The defaults are the `smollm2-r1` recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base: ModelConfig = Field(
        default_factory=lambda: ModelConfig(model="smollm2"),
        description="The model fine-tuned: 'smollm2', a hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local directory.",
    )
    prompts: str = Field(default="arithmetic+logic", description="Built-in sets the teacher writes traces for, joined by +.")
    traces: int = Field(default=1000, ge=1, description="Teacher traces trained on (each once per epoch).")
    prompt_seed: int = Field(default=1, description="Seed of the training prompts (the demo collects seed 0).")
    held_out_seeds: tuple[int, ...] = Field(
        default=(0, 2), description=f"Seeds whose first {HELD_OUT_PROMPTS} prompts are kept out of training."
    )
    teacher_seed: int = Field(default=0, description="Seed of the teacher's choices (openings, slips, wording).")
    epochs: int = Field(default=1, ge=1, description="Passes over the traces.")
    batch_size: int = Field(default=8, ge=1, description="Traces per optimiser step.")
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak AdamW learning rate (cosine decay to 10 %).")
    warmup_steps: int = Field(default=10, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_length: int = Field(default=384, ge=16, description="Traces longer than this many tokens are left out.")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Matmul precision under autocast (weights stay float32): 'auto' is bfloat16 where the "
        "hardware has it (CUDA, or a CPU with AVX512-BF16/AMX), else float32.",
    )
    seed: int = Field(default=0, description="Seed of the data order.")
    checkpoint_seconds: float = Field(default=300.0, ge=0, description="Save a resumable checkpoint this often (0: every step).")

    @field_validator("base", mode="before")
    @classmethod
    def _base_spec(cls, value: Any) -> Any:
        return {"model": value} if isinstance(value, str) else value

    def recipe(self) -> dict[str, Any]:
        """What decides the weights: everything but where it runs and how often it checkpoints."""
        facts = self.model_dump(mode="json", exclude={"checkpoint_seconds"})
        facts["base"] = {key: facts["base"][key] for key in ("model", "revision")}
        facts["teacher_version"] = TEACHER_VERSION
        return facts

    def recipe_hash(self) -> str:
        """Hex sha256 of the recipe: the key of a made model in the cache."""
        return hashlib.sha256(json.dumps(self.recipe(), sort_keys=True).encode()).hexdigest()
