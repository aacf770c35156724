"""label: offline heuristic labels into RUN/features.db's autointerp table."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from thinklens.features.labels import write_heuristic_labels
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult


class LabelConfig(BaseModel):
    """Settings of the heuristic labels."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    force: bool = Field(default=False, description="Relabel even when every feature has a label.")


def run(config: LabelConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Label every feature without a label (LLM labels are never overwritten)."""
    written, skipped = write_heuristic_labels(rundir.features_db, force=config.force)
    if skipped:
        return StageResult.nothing_to_do(f"every feature in {rundir.features_db} has a label")
    return StageResult(skipped=False,
                       headline=f"labelled {written:,} features in {rundir.features_db} (model_name='heuristic')",
                       written=[rundir.features_db], resolved={"labelled": written})


STAGE = Stage(
    name="label",
    config=LabelConfig,
    run=run,
    help="Offline heuristic labels (dominant activating tokens + segment) into features.db's autointerp table.",
    reads=("features_db",),
    options={"force": "force"},
)
