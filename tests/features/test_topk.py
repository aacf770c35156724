"""Per-feature top-N with pending merges equals a full sort of everything offered."""

from __future__ import annotations

import pytest
import torch

from thinklens.features.topk import TopPerFeature


def test_top_per_feature_equals_sorting_everything():
    torch.manual_seed(0)
    top = TopPerFeature(n_features=7, n=4)
    offered = []
    for batch in range(40):
        features = torch.randint(0, 7, (60,))
        scores = torch.rand(60)
        top.update(features, scores, scores * 10, torch.full((60,), batch), torch.arange(60))
        offered.append((features, scores, batch))
    top.finish()
    for feature in range(7):
        everything = sorted(((float(s), b, i) for f, sc, b in offered for i, (ff, s) in enumerate(zip(f, sc, strict=True))
                             if ff == feature), reverse=True)[:4]
        assert top.scores[feature].tolist() == [score for score, _, _ in everything]
        assert [(s, t) for _, s, t in top.entries(feature)] == [(b, i) for _, b, i in everything]
        assert [v for v, _, _ in top.entries(feature)] == pytest.approx([score * 10 for score, _, _ in everything])
