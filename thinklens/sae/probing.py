"""Sparse probing (SAEBench's): can k SAE features tell apart labels the traces carry?

Tasks come from what the procedural prompt sets record: the operator of single-operator arithmetic
prompts (one-vs-rest), whether the answer was correct, and the prompt set. Each trace is one
example: its SAE codes (and, for the baseline, its model activations) mean-pooled over its tokens
(special and massive tokens excluded, as in training). Per task, classes are balanced by
subsampling the larger one (chance is 50 %), traces are split into train and test by a hash of
their id, the k features whose mean code differs most between the classes *on the train split*
are kept, and a logistic regression on them is scored on the test split. The same regression on
all model dimensions is the ceiling ("llm"), as in SAEBench.

The SAE never saw a label, but the probe's traces may include ones it was trained on (the run's
hold-out split is too small to probe on); the probe's own train/test split is what keeps the
score honest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from thinklens.activations.store import ActivationStore
from thinklens.data.traces import TraceStore
from thinklens.sae.sae import Sae
from thinklens.stats import Rate, rate

MIN_PER_CLASS = 8  # a task with fewer examples of either class is skipped


@dataclass
class ProbeTask:
    """A binary labelling of traces: `labels[i]` of trace `sequence_ids[i]`."""

    name: str
    sequence_ids: np.ndarray
    labels: np.ndarray  # bool


@dataclass
class ProbeResult:
    task: str
    train: int  # traces per split, after balancing
    test: int
    llm_accuracy: float
    sae_accuracy: float  # all features
    top_k_accuracy: dict[int, float] = field(default_factory=dict)

    def interval(self, accuracy: float) -> Rate:
        """An accuracy on this task's test traces with its Wilson 95 % interval."""
        return rate(round(accuracy * self.test), self.test)


def probe_tasks(traces_dir: Path) -> list[ProbeTask]:
    """The binary tasks the traces' metadata supports (each with enough examples of both classes)."""
    rows = TraceStore(traces_dir).read(["sequence_id", "source", "metadata", "correct"]).to_pylist()
    ids = np.array([row["sequence_id"] for row in rows], dtype=np.int64)
    metadata = [json.loads(row["metadata"] or "{}") for row in rows]
    tasks: list[ProbeTask] = []
    single = np.array([len(meta.get("operators", [])) == 1 for meta in metadata])
    operators = np.array([meta.get("operator", "") for meta in metadata])
    for operator in sorted(set(operators[single]) - {""}):
        tasks.append(ProbeTask(f"operator={operator}", ids[single], operators[single] == operator))
    known = np.array([row["correct"] is not None for row in rows])
    tasks.append(ProbeTask("correct", ids[known], np.array([bool(row["correct"]) for row in rows])[known]))
    sources = np.array([row["source"] or "" for row in rows])
    names = sorted(set(sources))
    if len(names) > 1:  # one-vs-rest; of two sets, one task (the other is its mirror)
        tasks += [ProbeTask(f"source={source}", ids, sources == source) for source in names[: len(names) - (len(names) == 2)]]
    return [task for task in tasks if min(task.labels.sum(), (~task.labels).sum()) >= MIN_PER_CLASS]


@torch.no_grad()
def pooled_activations(sae: Sae, store: ActivationStore, layer: int, sequence_ids: np.ndarray,
                       batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n, d_sae), activations (n, d_model)): each trace's mean over its kept tokens, in the
    order of `sequence_ids` (one pass over the store; memory n × (d_sae + d_model))."""
    position = {int(sequence): i for i, sequence in enumerate(sequence_ids)}
    codes = torch.zeros(len(sequence_ids), sae.config.d_sae, dtype=torch.float64)
    activations = torch.zeros(len(sequence_ids), store.d_model, dtype=torch.float64)
    counts = torch.zeros(len(sequence_ids), dtype=torch.float64)
    for batch in store.kept_batches(layer, batch_size, ("sequence_id",)):
        slot = np.array([position.get(int(sequence), -1) for sequence in batch.index["sequence_id"]], dtype=np.int64)
        chosen = np.flatnonzero(slot >= 0)
        if len(chosen) == 0:
            continue
        x = batch.x[torch.from_numpy(chosen)]
        where = torch.from_numpy(slot[chosen])
        dense = sae.encode(x.to(sae.device), batch_dependent=False).dense().cpu().double()
        codes.index_add_(0, where, dense)
        activations.index_add_(0, where, x.double())
        counts.index_add_(0, where, torch.ones(len(chosen), dtype=torch.float64))
    counts = counts.clamp_min(1)[:, None]
    return (codes / counts).float().numpy(), (activations / counts).float().numpy()


def balanced_split(task: ProbeTask, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the task's traces for train and test: classes subsampled to equal size, traces
    assigned to test by a hash of their id (stable across SAEs and runs)."""
    generator = np.random.default_rng(seed)
    positive, negative = np.flatnonzero(task.labels), np.flatnonzero(~task.labels)
    size = min(len(positive), len(negative))
    chosen = np.concatenate([generator.choice(positive, size, replace=False),
                             generator.choice(negative, size, replace=False)])
    hashed = (task.sequence_ids[chosen] * 2654435761 % 2**32) / 2**32  # Knuth's multiplicative hash
    test = hashed < test_fraction
    return chosen[~test], chosen[test]


def _accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    train_x, test_x = train_x.astype(np.float64), test_x.astype(np.float64)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    varying = std > 1e-9  # a feature silent on every train trace carries nothing (and would divide by 0)
    if not varying.any():
        return 0.5
    scale = lambda x: (x[:, varying] - mean[varying]) / std[varying]  # noqa: E731
    model = LogisticRegression(max_iter=2000, C=1.0)
    model.fit(scale(train_x), train_y)
    return float(model.score(scale(test_x), test_y))


def sparse_probe(task: ProbeTask, codes: np.ndarray, activations: np.ndarray, ks: tuple[int, ...],
                 test_fraction: float = 0.2, seed: int = 0) -> ProbeResult | None:
    """Scores of one task (`codes`/`activations` row i is trace `task.sequence_ids[i]`); None when a
    split lacks a class."""
    train, test = balanced_split(task, test_fraction, seed)
    y = task.labels
    if len(set(y[train])) < 2 or len(set(y[test])) < 2:
        return None
    difference = np.abs(codes[train][y[train]].mean(axis=0) - codes[train][~y[train]].mean(axis=0))
    order = np.argsort(-difference, kind="stable")
    top = {k: _accuracy(codes[train][:, order[:k]], y[train], codes[test][:, order[:k]], y[test]) for k in ks}
    return ProbeResult(
        task=task.name, train=len(train), test=len(test),
        llm_accuracy=_accuracy(activations[train], y[train], activations[test], y[test]),
        sae_accuracy=_accuracy(codes[train], y[train], codes[test], y[test]),
        top_k_accuracy=top,
    )
