"""Run one stage, or every stage in order: `run_stage` and `run`.

Both are what the CLI calls, and what a Python caller calls:

```python
from thinklens.pipeline import RunConfig, run
results = run(RunConfig(out="runs/x", harvest={"layers": [15]}))   # run.yaml written, stages in order
results = run(RunConfig(out="runs/x", harvest={"layers": [15]}))   # again: every stage skipped
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from thinklens.errors import ThinklensError
from thinklens.pipeline.config import RunConfig, missing_sections
from thinklens.pipeline.lock import run_lock
from thinklens.pipeline.registry import STAGES, get_stage, stages_from
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult


class RunObserver:
    """Told when each stage of `run` starts and ends (the CLI prints; the default does nothing)."""

    def stage_started(self, number: int, total: int, stage: Stage, removed: list[Path]) -> None:
        """`stage` is about to run; `removed` is what `from_stage` deleted for it."""

    def stage_finished(self, stage: Stage, result: StageResult) -> None:
        """`stage` ran (or found its work done)."""


def run_stage(name: str, config: BaseModel | dict[str, Any] | None, rundir: RunDir | Path | str,
              progress: bool = True) -> StageResult:
    """Run stage `name` with `config` (its typed config, or a mapping of its fields) on the run directory.

    When the stage did work, what it was asked and what it resolved go into run.yaml.
    """
    stage = get_stage(name)
    rundir = rundir if isinstance(rundir, RunDir) else RunDir(rundir)
    config = config if isinstance(config, stage.config) else stage.config.model_validate(config or {})
    with run_lock(rundir.root, stage.name):
        if stage.recorded:
            rundir.record()  # a run.yaml that will not parse is refused before the work, not after it
        result = stage.run(config, rundir, progress)
        if not result.skipped and stage.recorded:
            rundir.record_stage(stage.name, config.model_dump(mode="json"), result.resolved)
    return result


def run(config: BaseModel, out: Path | str | None = None, from_stage: str | None = None, progress: bool = True,
        observer: RunObserver | None = None) -> list[StageResult]:
    """Run every stage in order into `out` (default: the config's `out`); finished stages are skipped.

    `from_stage` forces that stage and every later one: their artifacts are removed first. The
    config is checked whole before anything is written; run.yaml records it (with `out`).
    """
    if not isinstance(config, RunConfig):
        config = RunConfig.model_validate(config)
    forced = stages_from(from_stage)
    root = out if out is not None else config.out
    if root is None:
        raise ThinklensError("no run directory: pass --out RUN or set `out:` in the config")
    problems = missing_sections(config)
    if problems:
        raise ThinklensError(problems[0])
    observer = observer or RunObserver()
    rundir = RunDir(root)
    with run_lock(root, "run"):
        rundir.record_config(config.model_copy(update={"out": Path(root)}).model_dump(mode="json", exclude_none=True))
        results = []
        for number, stage in enumerate(STAGES, start=1):
            removed = [rundir.artifact(name) for name in stage.writes] if stage.name in forced else []
            removed = [path for path in removed if rundir.remove(path)]
            observer.stage_started(number, len(STAGES), stage, removed)
            result = run_stage(stage.name, getattr(config, stage.name), rundir, progress)
            observer.stage_finished(stage, result)
            results.append(result)
    return results
