"""Named map regions and the neighbour-agreement measure, on layouts whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from thinklens.analysis.map_regions import NOISE_LABEL, name_regions, neighbour_agreement, region_levels


def _two_blobs(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 0.3, (n, 2)), rng.normal(10, 0.3, (n, 2))]).astype(np.float32)


def test_two_blobs_are_two_regions_named_by_their_own_tokens():
    coordinates = _two_blobs()
    (fine,) = region_levels(coordinates, [10])
    assert len(set(fine.tolist()) - {-1}) == 2 and (fine[:60] == fine[0]).mean() > 0.9
    # every feature fires on ' the'; the left blob's also on ' 7', the right blob's on ' Carol'
    tokens = [[" the", " 7"]] * 60 + [[" the", " Carol"]] * 60
    segments = ["thinking"] * 60 + ["prompt"] * 30 + ["answer"] * 30
    names = name_regions(fine, tokens, segments, tokens_per_name=1)
    left, right = names[np.flatnonzero(fine == fine[0])[0]], names[np.flatnonzero(fine == fine[-1])[0]]
    assert left == "'7' · thinking"  # the distinctive token, not the shared ' the'; the segment where ≥ 60 % agree
    assert right == "'Carol'"  # its members split between prompt and answer: no segment named
    assert all(name == NOISE_LABEL for name, c in zip(names, fine, strict=True) if c == -1)


def test_a_level_too_coarse_for_the_points_is_all_noise():
    (level,) = region_levels(_two_blobs(5), [50])
    assert (level == -1).all()


def test_neighbour_agreement_sees_a_layout_that_groups_keys_and_one_that_does_not():
    coordinates = _two_blobs()
    grouped = neighbour_agreement(coordinates, ["a"] * 60 + ["b"] * 60, k=5)
    assert grouped["neighbours"] == pytest.approx(1.0) and grouped["random"] == pytest.approx(0.5, abs=0.1)
    assert grouped["ratio_low"] > 1.5
    rng = np.random.default_rng(1)
    shuffled = neighbour_agreement(coordinates, list(rng.choice(["a", "b"], size=120)), k=5)
    assert shuffled["ratio_low"] < 1 < shuffled["ratio_high"]  # keys unrelated to the layout: no agreement
    partial = neighbour_agreement(coordinates, ["a"] * 60 + [None] * 60, k=5)
    assert partial["points"] == 60  # points without a key are left out


def test_a_model_names_regions_from_their_labels_and_token_names_stay_where_it_cannot():
    from thinklens.analysis.map_regions import llm_region_names

    names = np.array(["'7'", "'7'", "'Carol'", "'Carol'", "'Ben'", NOISE_LABEL], dtype=object)
    labels = ["digit seven", "the number 7", "a name", "names of people", "another name", "noise"]
    prompts = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        if "digit seven" in prompt:
            return 'Sure: {"label": "Numbers"}'
        if "another name" in prompt:
            return '{"label": "<the region\'s name>"}'  # an echo of the template: no name
        return '{"label": "People"}'

    renamed, count = llm_region_names(names, labels, ask)
    assert list(renamed) == ["Numbers", "Numbers", "People", "People", "'Ben'", NOISE_LABEL] and count == 2
    assert len(prompts) == 3 and all("noise" not in p for p in prompts)  # one question per region; noise is no region
    twice, _ = llm_region_names(np.array(["a", "b"], dtype=object), ["x", "y"], lambda _p: '{"label": "Same"}')
    assert sorted(twice) == ["Same", "Same (2)"]  # two regions stay two
