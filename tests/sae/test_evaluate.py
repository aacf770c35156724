"""Evaluation arithmetic: FVU, L0, dead and dense fractions from streamed batches."""

from __future__ import annotations

import pytest
import torch

from thinklens.sae.evaluate import _Accumulator
from thinklens.sae.sae import SaeOutput, SparseCodes


def _output(recon: torch.Tensor, rows: list[int], features: list[int], d_sae: int) -> SaeOutput:
    codes = SparseCodes(torch.ones(len(rows)), torch.tensor(features), torch.tensor(rows), len(recon), d_sae)
    return SaeOutput(recon, codes, torch.zeros(len(recon), d_sae))


def test_fvu_l0_dead_dense_worked_example():
    # x = (1,0), (3,0), (2,2); reconstructions (1,0), (1,0), (2,1).
    # Squared error: 0 + 4 + 1 = 5. Mean x̄ = (2, 2/3); Σ‖x − x̄‖² = 1 + 4/9 + 1 + 4/9 + 0 + 16/9 = 14/3.
    # FVU = 5 / (14/3) = 15/14. Features fired: 0 on rows 0,1,2; 1 on row 1 → L0 = 4/3.
    # Of 4 features, 2 never fire (dead 1/2); feature 0 fires on 3/3 and 1 on 1/3 of tokens (> 0.5: dense 1/4).
    accumulator = _Accumulator(d_in=2, d_sae=4)
    accumulator.add(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), _output(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), [0, 1, 1], [0, 0, 1], 4))
    accumulator.add(torch.tensor([[2.0, 2.0]]), _output(torch.tensor([[2.0, 1.0]]), [0], [0], 4))
    metrics = accumulator.metrics(dense_threshold=0.5)
    assert metrics.tokens == 3
    assert metrics.fvu == pytest.approx(15 / 14)
    assert metrics.l0 == pytest.approx(4 / 3)
    assert (metrics.dead_fraction, metrics.dense_fraction) == (0.5, 0.25)
