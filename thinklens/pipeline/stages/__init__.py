"""One module per pipeline stage: `run(config, rundir, progress) -> StageResult` and its `STAGE`."""
