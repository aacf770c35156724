"""Strength sweeps: does steering work, from where, and does it revert before it breaks?

For each (policy, strength): S samples on each of P prompts, the same seeds at every strength, every
sample measured (behaviour and coherence) and saved. Then each strength gets a regime (unchanged,
steered, reverted, broken) by the rule of `thinklens.steering.regimes`, and each policy is checked
for the oversteering pattern: steered → reverted → broken as strength grows.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from thinklens.data.records import PromptRecord
from thinklens.files import atomic_path, ensure_dir, write_json_atomic
from thinklens.models.generate import Sampling
from thinklens.models.loader import resolve_device
from thinklens.progress import progress_bar
from thinklens.steering.engine import MAX_STRENGTH
from thinklens.steering.metrics import SampleMetrics, measure
from thinklens.steering.plots import plot_sweep
from thinklens.steering.regimes import PointSummary, RegimeThresholds, oversteering_pattern, summarise
from thinklens.steering.variant import Variant


class SweepConfig(BaseModel):
    """One feature, several strengths and position policies."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    feature: int = Field(ge=0, description="Feature to steer.")
    strengths: tuple[float, ...] = Field(default=(0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0), description="Strengths (0 = baseline).")
    policies: tuple[str, ...] = Field(default=("first_token", "after_prefix"), description="Position policies compared.")
    mode: str = Field(default="add", pattern="^(add|clamp|scale)$", description="add, clamp or scale.")
    absolute: bool = Field(default=False, description="Strengths are raw activations.")
    prompts: int = Field(default=8, ge=1, description="Prompts (P) from the run's prompt set.")
    samples: int = Field(default=2, ge=1, description="Samples (S) per prompt, same seeds at every strength.")
    max_new_tokens: int = Field(default=128, ge=1, description="Generated tokens per sample.")
    temperature: float = Field(default=0.6, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus mass.")
    seed: int = Field(default=0, description="Base seed.")
    backtrack_words: tuple[str, ...] = Field(default=("Wait", "But", "Hmm"), description="Backtracking words counted.")
    regex: str | None = Field(default=None, description="Also count matches of this regex in each output.")
    thresholds: RegimeThresholds = Field(default_factory=RegimeThresholds, description="Regime rule thresholds.")
    device: str = Field(
        default="auto", description="Where the model and the SAE run (`open_variant`'s device): 'auto' (cuda when "
        "available, else cpu), 'cpu', 'cuda:1', ..."
    )


def strengths_from_text(value: Any) -> Any:
    """A strength grid given as text ("0,1,2,4", from the command line) as a tuple, each finite and within
    ±MAX_STRENGTH; anything else as it is."""
    if isinstance(value, str):
        try:
            value = tuple(float(part) for part in value.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"strengths must be numbers separated by commas, e.g. 0,1,2,4 (got {value!r})") from None
    if isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                    and abs(v) <= MAX_STRENGTH for v in value):
        raise ValueError(f"strengths must be finite and at most {MAX_STRENGTH:g} in size (got {value!r})")
    return value


@dataclass
class SweepResult:
    directory: Path
    points: list[PointSummary]
    oversteering: dict[str, bool] = field(default_factory=dict)


def run_sweep(config: SweepConfig, variant: Variant, prompts: Sequence[PromptRecord], directory: Path,
              show_progress: bool = True) -> SweepResult:
    """Generate, measure and save every sample, then summarise and classify each strength.

    `variant` is expected on `config.device` (`open_variant(..., device=config.device)`).
    """
    resolve_device(config.device)  # a device this machine lacks fails before anything is written
    ensure_dir(directory)
    prompts = list(prompts[: config.prompts])
    batch = [record for record in prompts for _ in range(config.samples)]
    sampling = Sampling(temperature=config.temperature, top_p=config.top_p)
    regex = re.compile(config.regex) if config.regex else None
    rows: list[dict] = []
    strengths = sorted(set(config.strengths) | {0.0})
    with progress_bar("sweep", total=len(config.policies) * len(strengths), enabled=show_progress) as bar:
        for policy in config.policies:
            for strength in strengths:
                variant.reset()
                if strength != 0.0:
                    variant.set(config.feature, strength, policy=policy, mode=config.mode)
                    variant.absolute = config.absolute
                outputs = variant.generate([r.prompt for r in batch], config.max_new_tokens, sampling, seed=config.seed)
                readouts = variant.readouts(outputs, config.feature)
                for index, (record, output) in enumerate(zip(batch, outputs, strict=True)):
                    metrics = measure(output, variant.loaded, variant.sae, config.feature, variant.layer,
                                      record.answer, config.backtrack_words, regex, readouts[index])
                    rows.append(_row(policy, strength, record, index % config.samples, config, output, metrics))
                bar.advance(1, tokens=sum(len(o.token_ids) - o.generation_start for o in outputs))
    with atomic_path(directory / "samples.jsonl") as temp:
        temp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return write_summary(rows, config, directory)


def write_summary(rows: list[dict], config: SweepConfig, directory: Path) -> SweepResult:
    """Summarise saved samples into regimes, summary.json and the plots (also re-runnable on samples.jsonl)."""
    points = summarise(rows, config.policies, config.thresholds)
    result = SweepResult(directory, points, oversteering_pattern(points))
    write_json_atomic(directory / "summary.json", {
        "config": config.model_dump(mode="json"),
        "points": [asdict(point) for point in points],
        "oversteering": result.oversteering,
    })
    plot_sweep(points, directory, feature=config.feature, policies=config.policies, absolute=config.absolute)
    return result


def _row(policy: str, strength: float, record: PromptRecord, sample: int, config: SweepConfig, output,
         metrics: SampleMetrics) -> dict:
    operator = record.metadata.get("operator")
    values = asdict(metrics)
    values["backtracking_total"] = sum(metrics.backtracking.values())
    values["operator_kept"] = None if operator is None or metrics.operator is None else metrics.operator == operator
    return {
        "policy": policy,
        "strength": strength,
        "prompt_id": record.prompt_id,
        "prompt": record.prompt,
        "sample": sample,
        "seed": config.seed,
        "spec": {"feature": config.feature, "mode": config.mode, "absolute": config.absolute},
        "steering_start": None if math.isinf(output.start) else int(output.start) - output.generation_start,
        "output": output.completion,
        "token_ids": output.token_ids[output.generation_start :],
        "logprobs": [round(value, 5) for value in output.logprobs],
        "metrics": values,
    }
