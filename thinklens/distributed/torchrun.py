"""`thinklens train --nproc N`: the training ranks started by torchrun on this node, and waited for.

What it runs is `torchrun --standalone --nproc-per-node N -m thinklens train RUN --config FILE`, the
command a user runs on a cluster (there with `--nnodes` and a rendezvous of their own), with FILE
holding this stage's settings. The ranks' output is this process's output; a rank that dies fails
the whole job (torchrun stops the others) and the checkpoint rank 0 last wrote is what a re-run
resumes from, on any number of ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from thinklens.errors import ThinklensError
from thinklens.sae.train import TrainConfig


def torchrun_command(root: Path, config_file: Path, nproc: int) -> list[str]:
    """The torchrun command line that trains `root`'s SAE as `nproc` ranks on this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "thinklens", "train", str(root), "--config", str(config_file)]


def launch_training(config: TrainConfig, root: Path, env: dict[str, str] | None = None) -> float:
    """Train `root`'s SAE as `config.nproc` ranks under torchrun; returns the seconds it took.

    `env` is added to the ranks' environment (the run lock's holder tells its ranks so). Each rank
    gets an equal share of this machine's cores unless OMP_NUM_THREADS is set. Raises ThinklensError
    naming the fix when a rank fails.
    """
    threads = max(1, (os.cpu_count() or 1) // config.nproc)
    rank_env = {"OMP_NUM_THREADS": str(threads), **os.environ, **(env or {})}
    settings = {"train": config.model_dump(mode="json", exclude={"nproc"})}
    with tempfile.TemporaryDirectory(prefix="thinklens-torchrun-") as scratch:
        config_file = Path(scratch) / "train.yaml"
        config_file.write_text(json.dumps(settings))  # JSON is YAML
        started = time.perf_counter()
        try:
            finished = subprocess.run(torchrun_command(root, config_file, config.nproc), env=rank_env, check=False)
        except OSError as exc:
            raise ThinklensError(f"cannot start torchrun ({exc.strerror}): check that torch is installed in "
                                 f"{sys.executable}") from None
    if finished.returncode != 0:
        raise ThinklensError(
            f"training on {config.nproc} ranks failed (torchrun exit {finished.returncode}; the failing rank's "
            f"error is above): the checkpoint in {root / 'sae'} is kept, run the same command to resume (any --nproc)")
    return time.perf_counter() - started
