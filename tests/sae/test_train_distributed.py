"""Training on several ranks (torchrun, gloo on CPU): the global BatchTopK keeps what one process keeps,
two ranks train the one-process SAE, and a killed rank fails the job and costs only what its
checkpoint had not saved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.activations.synthetic import sparse_mixture, write_store_from_array
from thinklens.sae.formats import load_sae
from thinklens.sae.parallel import Ranks
from thinklens.sae.sae import batch_topk_entries
from thinklens.sae.train import CHECKPOINT_FILE, LOG_FILE

# Two ranks add their gradients in another order than one process sums its batch: after 60 steps
# the weights differ by float32 rounding only (measured: max |Δ| ≈ 2e-7 of weights ~0.6 for BatchTopK,
# TopK and ReLU alike; ReLU's Adam on rare features amplifies it to ~7e-3 by 200 steps).
ATOL = 1e-5


def _select_on_rank(rank: int, world: int, init: str, pre: torch.Tensor, k: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        part = pre[Ranks(rank, world).share(len(pre))]
        rows, features = batch_topk_entries(part, k, Ranks(rank, world))
        torch.save((rows + rank * len(part), features), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("case", ["random", "ties at the cut", "few positives"])
def test_the_global_batch_topk_over_two_ranks_keeps_what_one_process_keeps(tmp_path, case):
    generator = torch.Generator().manual_seed(1)
    pre = torch.randn(64, 512, generator=generator)
    if case == "ties at the cut":
        pre = pre.round(decimals=1)  # many equal values: ties at the cut are all kept
    if case == "few positives":
        pre = pre - 3.2  # fewer positive entries than k·n: every positive one is kept
    k = 8
    mp.spawn(_select_on_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", pre, k, str(tmp_path / "sel")),
             nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"sel.{rank}") for rank in range(2)]
    rows, features = (torch.cat([part[i] for part in parts]) for i in range(2))
    expected_rows, expected_features = batch_topk_entries(pre, k)
    assert torch.equal(rows, expected_rows) and torch.equal(features, expected_features)
    if case != "few positives":
        assert len(rows) >= k * len(pre)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """12,288 tokens of 48 planted directions in 32 dimensions."""
    activations = tmp_path_factory.mktemp("ddp") / "activations"
    write_store_from_array(activations, sparse_mixture(n=12_288, d_model=32, n_directions=48, active=3),
                           tokens_per_sequence=64, shard_tokens=4096)
    return activations


def _train_command(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "thinklens", "train", str(run), "--arch", "batchtopk_tied", "--k", "3",
            "--expansion", "4", "--batch-size", "256", "--lr", "0.003", "--min-steps", "0", *extra]


def _run_with(store: Path, run: Path) -> Path:
    run.mkdir()
    (run / "activations").symlink_to(store)
    return run


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_sae(a), load_sae(b)
    for (name, x), (_, y) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=ATOL, rtol=0), (name, float((x - y).abs().max()))


@pytest.mark.integration
def test_two_ranks_train_the_single_process_sae(store, tmp_path):
    one, two = _run_with(store, tmp_path / "one"), _run_with(store, tmp_path / "two")
    subprocess.run(_train_command(one, "--tokens", str(60 * 256)), check=True, capture_output=True)
    launched = subprocess.run(_train_command(two, "--tokens", str(60 * 256), "--nproc", "2"), capture_output=True,
                              text=True)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert "on 2 ranks" in launched.stdout
    _assert_same_weights(one / "sae", two / "sae")
    logs = [[json.loads(line) for line in (run / "sae" / LOG_FILE).read_text().splitlines()] for run in (one, two)]
    assert [line["step"] for line in logs[1]] == list(range(1, 61))  # rank 0 alone wrote the log
    for a, b in zip(*logs, strict=True):
        assert a["fvu"] == pytest.approx(b["fvu"], rel=1e-4) and a["l0"] == pytest.approx(b["l0"], rel=1e-4)
    assert not (two / "sae" / CHECKPOINT_FILE).exists()
    again = subprocess.run(_train_command(two, "--tokens", str(60 * 256), "--nproc", "2"), capture_output=True,
                           text=True)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_before_any_rank_starts(store, tmp_path):
    run = _run_with(store, tmp_path / "run")
    refused = subprocess.run(_train_command(run, "--batch-size", "255", "--nproc", "2"), capture_output=True,
                             text=True)
    assert refused.returncode == 2
    assert "a batch of 255 tokens does not split over 2 ranks: pass a --batch-size divisible by 2" in refused.stderr
    assert "torch.distributed" not in refused.stderr and not (run / "sae").exists()


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_and_the_run_resumes_on_another_number_of_ranks(store, tmp_path):
    killed, whole = _run_with(store, tmp_path / "killed"), _run_with(store, tmp_path / "whole")
    settings = ("--epochs", "6", "--checkpoint-every", "20")
    launcher = subprocess.Popen(_train_command(killed, *settings, "--nproc", "2"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (killed / "sae" / CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (killed / "sae" / CHECKPOINT_FILE).exists(), launcher.stderr.read() if launcher.poll() else "no checkpoint"
    (agent,) = _children(launcher.pid)  # the launcher runs torchrun, whose agent starts the ranks
    ranks = _children(agent)
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 2
    assert stderr.strip().splitlines()[-1].startswith("error: training on 2 ranks failed (torchrun exit")
    assert (killed / "sae" / CHECKPOINT_FILE).exists() and not (killed / "sae" / "cfg.json").exists()
    subprocess.run(_train_command(killed, *settings), check=True, capture_output=True)  # resumed on one rank
    subprocess.run(_train_command(whole, *settings, "--nproc", "2"), check=True, capture_output=True)
    _assert_same_weights(killed / "sae", whole / "sae")
    steps = [json.loads(line)["step"] for line in (killed / "sae" / LOG_FILE).read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one line per step, across the kill


@pytest.fixture(scope="module")
def two_layer_store(indexed_run, tmp_path_factory) -> Path:
    from thinklens.activations.harvest import HarvestConfig, harvest

    activations = tmp_path_factory.mktemp("two-layers") / "activations"
    harvest(HarvestConfig(layers=(0, 1), shard_tokens=600), indexed_run / "traces", activations, show_progress=False)
    return activations


def _layer_command(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "thinklens", "train", str(run), "--arch", "topk", "--k", "4", "--expansion", "2",
            "--batch-size", "128", "--min-steps", "30", "--distribute-layers", *extra]


@pytest.mark.integration
def test_distribute_layers_trains_each_layer_on_its_own_rank_as_one_process_would(two_layer_store, tmp_path):
    one, two = _run_with(two_layer_store, tmp_path / "one"), _run_with(two_layer_store, tmp_path / "two")
    sequential = subprocess.run(_layer_command(one), capture_output=True, text=True)  # one process: one after another
    assert sequential.returncode == 0, sequential.stderr[-2000:]
    launched = subprocess.run(_layer_command(two, "--nproc", "2"), capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-2000:]
    for run in (one, two):
        assert load_sae(run / "sae").config.layer == 0  # the run's own layer stays RUN/sae
        assert load_sae(run / "saes" / "layers.1.resid_post").config.layer == 1
    _assert_same_weights(one / "sae", two / "sae")
    _assert_same_weights(one / "saes" / "layers.1.resid_post", two / "saes" / "layers.1.resid_post")
    assert "layer 1 → saes/layers.1.resid_post" in launched.stdout
    plain = subprocess.run([sys.executable, "-m", "thinklens", "train", str(one), "--arch", "topk", "--k", "4",
                            "--expansion", "2", "--batch-size", "128", "--min-steps", "30"], capture_output=True,
                           text=True)
    assert plain.returncode == 0 and "nothing to do" in plain.stdout  # RUN/sae is what a plain train makes
