"""Sparse probing: the k features that differ most on the train split, scored on held-out traces."""

from __future__ import annotations

import numpy as np
import pytest

from thinklens.sae.probing import ProbeTask, balanced_split, sparse_probe


def _task(n: int = 400, positive_share: float = 0.3) -> ProbeTask:
    generator = np.random.default_rng(0)
    return ProbeTask("toy", np.arange(1000, 1000 + n), generator.random(n) < positive_share)


def test_balanced_split_is_balanced_disjoint_and_stable():
    task = _task()
    train, test = balanced_split(task, test_fraction=0.2, seed=0)
    assert not set(train) & set(test)
    chosen = np.concatenate([train, test])
    assert task.labels[chosen].sum() == (~task.labels[chosen]).sum()  # the larger class subsampled
    assert 0.1 < len(test) / len(chosen) < 0.3
    again_train, again_test = balanced_split(task, test_fraction=0.2, seed=0)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)


def test_one_informative_feature_is_found_and_noise_is_at_chance():
    task = _task()
    generator = np.random.default_rng(1)
    codes = generator.random((len(task.labels), 64)).astype(np.float32) * 0.5
    codes[:, 17] += task.labels * 2.0  # feature 17 fires more on the positive class
    activations = generator.standard_normal((len(task.labels), 32)).astype(np.float32)  # no signal at all
    result = sparse_probe(task, codes, activations, ks=(1, 2, 5))
    assert result is not None and result.task == "toy"
    assert result.top_k_accuracy[1] > 0.95 and result.sae_accuracy > 0.9
    assert result.llm_accuracy == pytest.approx(0.5, abs=0.2)


def test_a_split_without_both_classes_gives_no_score():
    task = ProbeTask("tiny", np.arange(4), np.array([True, False, True, False]))
    codes = np.zeros((4, 8), dtype=np.float32)
    assert sparse_probe(task, codes, codes, ks=(1,), test_fraction=0.01) is None
