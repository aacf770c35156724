"""The stages of the pipeline, in the order `thinklens run` runs them.

A new stage is one module under `pipeline/stages/` (its `run` and its `STAGE`) plus one line here;
the run config, the CLI command, `--from` and run.yaml follow from the declaration.
"""

from __future__ import annotations

from thinklens.errors import ThinklensError
from thinklens.pipeline import report
from thinklens.pipeline.stage import Stage
from thinklens.pipeline.stages import (
    analyze,
    collect,
    eval,
    findings,
    harvest,
    index,
    label,
    map,
    sweep,
    train,
)

STAGES: tuple[Stage, ...] = (
    collect.STAGE,
    harvest.STAGE,
    train.STAGE,
    eval.STAGE,
    index.STAGE,
    label.STAGE,
    analyze.STAGE,
    findings.STAGE,
    map.STAGE,
    sweep.STAGE,
    report.STAGE,
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def get_stage(name: str) -> Stage:
    """The stage called `name`; a one-line error listing the stages otherwise."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ThinklensError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")


def stages_from(start: str | None) -> list[str]:
    """The stages to force: `start` and every one after it (none when `start` is None)."""
    if start is None:
        return []
    get_stage(start)
    return list(STAGE_NAMES[STAGE_NAMES.index(start):])
