"""sweep: steer one feature at several strengths and position policies → RUN/sweeps/NAME/."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from thinklens.errors import ThinklensError
from thinklens.files import fresh_result, result_settings, write_envelope
from thinklens.models.loader import file_sha256
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult, Table
from thinklens.steering.engine import check_policy
from thinklens.steering.sweep import SweepConfig, run_sweep, strengths_from_text

ENRICHED_ORDER = ("thinking", "prefix", "answer", "prompt")  # where `feature: auto` looks, in turn


class SweepStageConfig(SweepConfig):
    """A sweep of a run: the feature may be `auto`, and the sweep has a directory name."""

    feature: int | Literal["auto"] = Field(
        default="auto", description="Feature to steer, or 'auto': the feature most enriched in the thinking "
                                    "(from analyze).")
    name: str | None = Field(default=None, description="Sweep directory name under RUN/sweeps (default feature-F).")
    skip: bool = Field(default=False, description="Leave this sweep out of `thinklens run` (the demo does: its findings "
                                                  "stage runs the study's two steering experiments instead).")

    @field_validator("strengths", mode="before")
    @classmethod
    def _strengths_text(cls, value: Any) -> Any:
        return strengths_from_text(value)

    @field_validator("policies", mode="before")
    @classmethod
    def _policies_text(cls, value: Any) -> Any:
        return tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_policy(policy) for policy in value)


def run(config: SweepStageConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Run the sweep unless its directory already holds it (same SAE, traces and settings)."""
    from thinklens.steering.from_run import open_variant, run_prompts

    if config.skip:
        return StageResult.nothing_to_do("skipped (sweep.skip): the findings stage steers for the study's claims")
    feature = config.feature if config.feature != "auto" else enriched_feature(rundir)
    sweep = SweepConfig(**{**config.model_dump(exclude={"name", "skip"}), "feature": feature})
    directory = rundir.sweep_dir(config.name or f"feature-{feature}")
    rundir.require("traces", "collect")
    rundir.require("sae_weights", "train")
    inputs = {"sae_sha256": file_sha256(rundir.sae_weights), "traces": rundir.trace_store.meta()["identity"]}
    envelope = directory / "sweep.json"
    if fresh_result(envelope, inputs, result_settings(sweep), [directory / "summary.json"]) is not None:
        return StageResult.nothing_to_do(f"{directory / 'summary.json'} already holds this sweep")
    variant = open_variant(rundir.traces, rundir.sae, rundir.features_db, [feature], device=sweep.device)
    result = run_sweep(sweep, variant, run_prompts(rundir.traces, sweep.prompts), directory, show_progress=progress)
    write_envelope(envelope, inputs, result_settings(sweep), {"feature": feature, "oversteering": result.oversteering})
    rows = [(p.policy, f"{p.strength:g}", p.regime, f"{p.shift:.2f}", f"{p.ppl_ratio:.2f}", f"{p.distinct2_ratio:.2f}",
             f"{p.means['readback']:.3g}", f"{p.means['correct']:.0%}" if p.means["correct"] == p.means["correct"]
             else "–") for p in result.points]
    lines = [f"{policy}: {'oversteering pattern (steered → reverted → broken)' if seen else 'no oversteering pattern'}"
             for policy, seen in result.oversteering.items()]
    lines.append(f"samples: {directory / 'samples.jsonl'}  plots: {directory / 'behaviour.png'}, "
                 f"{directory / 'coherence.png'}")
    return StageResult(
        skipped=False,
        headline=f"sweep of feature {feature} → {directory}",
        tables=[Table(f"sweep of feature {feature} → {directory}",
                      ("policy", "strength", "regime", "shift", "ppl ×", "distinct-2 ×", "read back", "correct"), rows)],
        lines=lines,
        written=[directory],
        resolved={"directory": directory.name, "feature": feature, "oversteering": result.oversteering},
    )


def enriched_feature(rundir: RunDir) -> int:
    """The feature most enriched in the thinking (else the prefix, answer, prompt), from analyze's shift."""
    shift = rundir.analysis_json("shift")
    if not shift.is_file():
        raise ThinklensError(f"feature 'auto' reads {shift}: run `thinklens analyze {rundir.root}` first, "
                             "or name a feature")
    enriched = json.loads(shift.read_text())["result"]["enriched"]
    for segment in ENRICHED_ORDER:
        if enriched.get(segment):
            return int(enriched[segment][0]["feature_id"])
    raise ThinklensError(f"{shift} lists no enriched feature: name one with --feature")


STAGE = Stage(
    name="sweep",
    config=SweepStageConfig,
    run=run,
    help="Steer one feature at several strengths and position policies; JSONL, regime table and plots in "
         "RUN/sweeps/.",
    reads=("traces", "sae", "features_db", "analysis_json:shift"),
    writes=("sweeps",),
    options={"feature": "feature", "strengths": "strengths", "policy": "policies", "mode": "mode",
             "absolute": "absolute", "prompts": "prompts", "samples": "samples", "max_new_tokens": "max_new_tokens",
             "seed": "seed", "regex": "regex", "name": "name", "device": "device"},
)
