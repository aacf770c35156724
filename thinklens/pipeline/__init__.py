"""The run as a library: the stage registry, the run directory, the run config, and `run`.

- `registry.STAGES`: every stage, declared once (`stage.Stage`), in pipeline order;
- `RunDir`: the one object that knows a run directory's layout, and run.yaml;
- `RunConfig`: one typed section per stage; the YAML schema of `thinklens run --config`;
- `run(config)` runs them all, `run_stage(name, config, rundir)` one.
"""

from thinklens.pipeline.config import RunConfig, load_run_config
from thinklens.pipeline.registry import STAGE_NAMES, STAGES, get_stage
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.runner import RunObserver, run, run_stage
from thinklens.pipeline.stage import Stage, StageResult, Table

__all__ = ["STAGES", "STAGE_NAMES", "RunConfig", "RunDir", "RunObserver", "Stage", "StageResult", "Table",
           "get_stage", "load_run_config", "run", "run_stage"]
