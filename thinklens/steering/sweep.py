"""Strength sweeps: does steering work, from where, and does it revert before it breaks?

For each (policy, strength): S samples on each of P prompts, the same seeds at every strength, every
sample measured (behaviour and coherence) and saved. Then each strength gets a regime:

- `broken`: coherence collapsed — perplexity under the unsteered model above `broken_ppl_ratio` ×
  the baseline's, or distinct-2 below `broken_distinct2_ratio` × the baseline's;
- `steered`: not broken, and the behaviour moved: the largest shift of a behaviour metric from the
  baseline (strength 0), in units of the baseline's spread across samples, is ≥ `steered_effect`.
  A spread is never taken below `MIN_SPREAD` of its metric (0.1 for shares such as correctness, 2
  thinking tokens, half a word for counts, 0.05 for the read-back activation) nor 5 % of the
  baseline mean, so that one sample flipping a metric that never varied at baseline is not a shift;
- `reverted`: not broken, behaviour back within `steered_effect` of the baseline, after a smaller
  strength of the same policy was `steered` — the oversteering paradox;
- `unchanged`: otherwise.

A policy shows the oversteering pattern when its regimes, by increasing strength, go steered →
reverted → broken.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from thinklens.data.records import PromptRecord
from thinklens.files import atomic_path, write_json_atomic
from thinklens.models.generate import Sampling
from thinklens.progress import progress_bar
from thinklens.steering.metrics import SampleMetrics, measure
from thinklens.steering.variant import Variant

BEHAVIOUR = ("readback", "thinking_tokens", "backtracking", "correct", "operator_kept", "regex_count")
COHERENCE = ("perplexity", "distinct2", "finished_with_answer", "hit_cap")
MIN_SPREAD = {"readback": 0.05, "thinking_tokens": 2.0, "backtracking": 0.5, "correct": 0.1, "operator_kept": 0.1,
              "regex_count": 0.5, "perplexity": 0.1, "distinct2": 0.02, "finished_with_answer": 0.1, "hit_cap": 0.1}


class RegimeThresholds(BaseModel):
    """The documented rule's thresholds (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steered_effect: float = Field(default=1.0, gt=0, description="Behaviour shift (in baseline spreads) that counts as steered.")
    broken_ppl_ratio: float = Field(default=3.0, gt=1, description="Perplexity ratio to baseline that counts as broken.")
    broken_distinct2_ratio: float = Field(default=0.6, gt=0, lt=1, description="Distinct-2 ratio below which it is broken.")


class SweepConfig(BaseModel):
    """One feature, several strengths and position policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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


@dataclass
class PointSummary:
    policy: str
    strength: float
    means: dict[str, float]
    shift: float  # largest behaviour shift from baseline, in baseline spreads
    ppl_ratio: float
    distinct2_ratio: float
    regime: str = "unchanged"


@dataclass
class SweepResult:
    directory: Path
    points: list[PointSummary]
    oversteering: dict[str, bool] = field(default_factory=dict)


def run_sweep(config: SweepConfig, variant: Variant, prompts: Sequence[PromptRecord], directory: Path,
              show_progress: bool = True) -> SweepResult:
    """Generate, measure and save every sample, then summarise and classify each strength."""
    directory.mkdir(parents=True, exist_ok=True)
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
                for index, (record, output) in enumerate(zip(batch, outputs, strict=True)):
                    metrics = measure(output, variant.loaded, variant.sae, config.feature, variant.layer,
                                      record.answer, config.backtrack_words, regex)
                    rows.append(_row(policy, strength, record, index % config.samples, config, output, metrics))
                bar.advance(1, tokens=sum(len(o.token_ids) - o.generation_start for o in outputs))
    with atomic_path(directory / "samples.jsonl") as temp:
        temp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return write_summary(rows, config, directory)


def write_summary(rows: list[dict], config: SweepConfig, directory: Path) -> SweepResult:
    """Summarise saved samples into regimes, summary.json and the plots (also re-runnable on samples.jsonl)."""
    from thinklens.steering.plots import plot_sweep

    points = summarise(rows, config)
    result = SweepResult(directory, points, oversteering_pattern(points))
    write_json_atomic(directory / "summary.json", {
        "config": config.model_dump(mode="json"),
        "points": [asdict(point) for point in points],
        "oversteering": result.oversteering,
    })
    plot_sweep(points, config, directory)
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


def _value(row: dict, name: str) -> float | None:
    metrics = row["metrics"]
    value = metrics["backtracking_total"] if name == "backtracking" else metrics.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def summarise(rows: list[dict], config: SweepConfig) -> list[PointSummary]:
    """Means per (policy, strength), shifts from the baseline, and regimes."""
    thresholds = config.thresholds
    baseline_rows = [row for row in rows if row["strength"] == 0.0]
    base_mean, base_spread = {}, {}
    for name in BEHAVIOUR + COHERENCE:
        values = [v for v in (_value(row, name) for row in baseline_rows) if v is not None]
        base_mean[name] = statistics.fmean(values) if values else math.nan
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        base_spread[name] = max(spread, 0.05 * abs(base_mean[name]) if values else 0.0, MIN_SPREAD[name])
    points = []
    for policy in config.policies:
        for strength in sorted({row["strength"] for row in rows}):
            subset = [row for row in rows if row["policy"] == policy and row["strength"] == strength] or (
                baseline_rows if strength == 0.0 else [])
            if not subset:
                continue
            means = {}
            for name in BEHAVIOUR + COHERENCE:
                values = [v for v in (_value(row, name) for row in subset) if v is not None]
                means[name] = statistics.fmean(values) if values else math.nan
            shifts = [abs(means[name] - base_mean[name]) / base_spread[name] for name in BEHAVIOUR
                      if not math.isnan(means[name]) and not math.isnan(base_mean[name])]
            point = PointSummary(
                policy=policy,
                strength=strength,
                means=means,
                shift=max(shifts) if shifts else 0.0,
                ppl_ratio=means["perplexity"] / base_mean["perplexity"] if base_mean["perplexity"] else math.nan,
                distinct2_ratio=means["distinct2"] / base_mean["distinct2"] if base_mean["distinct2"] else math.nan,
            )
            points.append(point)
    for policy in config.policies:
        steered_before = False
        for point in (p for p in points if p.policy == policy):
            if point.ppl_ratio > thresholds.broken_ppl_ratio or point.distinct2_ratio < thresholds.broken_distinct2_ratio:
                point.regime = "broken"
            elif point.shift >= thresholds.steered_effect:
                point.regime = "steered"
                steered_before = True
            elif steered_before:
                point.regime = "reverted"
    return points


def oversteering_pattern(points: list[PointSummary]) -> dict[str, bool]:
    """Per policy: do the regimes go steered → reverted → broken as strength grows?"""
    result = {}
    for policy in dict.fromkeys(point.policy for point in points):
        regimes = [p.regime for p in points if p.policy == policy]
        try:
            steered = regimes.index("steered")
            reverted = regimes.index("reverted", steered)
            result[policy] = "broken" in regimes[reverted:]
        except ValueError:
            result[policy] = False
    return result
