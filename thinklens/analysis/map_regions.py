"""Named regions of the feature map, and how much a layout's neighbourhoods mean.

Regions: HDBSCAN on the map's 2-D coordinates at a few resolutions (fine to coarse: a larger minimum
cluster size merges neighbouring regions), each region named by what distinguishes its members —
the activating tokens most over-represented among them (a tf-idf over the members' top tokens) and
the segment most of them fire in, where most agree. Points HDBSCAN calls noise stay unlabelled.

Meaning: a map whose close points are related features is one a reader can navigate. For each point,
its k nearest points on the map are compared with it (same first top token? same label?) and the
share of agreeing pairs is set against random pairs, with a bootstrap interval over points.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

NOISE_LABEL = "Unlabelled"


def region_levels(coordinates: np.ndarray, min_sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """One cluster id per point (−1: noise) for each minimum cluster size, in the order given."""
    from sklearn.cluster import HDBSCAN

    levels = []
    for size in min_sizes:
        if len(coordinates) <= size:
            levels.append(np.full(len(coordinates), -1))
            continue
        clusterer = HDBSCAN(min_cluster_size=size, min_samples=max(2, size // 2), copy=True)
        levels.append(clusterer.fit_predict(coordinates.astype(np.float64)))
    return levels


def default_min_sizes(points: int) -> list[int]:
    """Fine, medium and coarse minimum cluster sizes for a map of `points` features."""
    return sorted({max(5, points // 200), max(10, points // 60), max(20, points // 20)})


def name_regions(clusters: np.ndarray, top_tokens: Sequence[Sequence[str]], segments: Sequence[str],
                 tokens_per_name: int = 2) -> np.ndarray:
    """A name per point from its region: the region's most distinctive top tokens, and its segment where at
    least 60 % of its members fire most there; noise points get `NOISE_LABEL`. Names are unique per level."""
    document_frequency = Counter(token for tokens in top_tokens for token in set(_clean(tokens)))
    total = len(top_tokens)
    names: dict[int, str] = {}
    used: Counter = Counter()
    for cluster in sorted(set(clusters.tolist()) - {-1}):
        members = np.flatnonzero(clusters == cluster)
        counts = Counter(token for i in members for token in set(_clean(top_tokens[i])))
        scored = sorted(counts, key=lambda t: (-counts[t] / len(members) * math.log(1 + total / document_frequency[t]), t))
        words = " ".join(repr(t) for t in scored[:tokens_per_name]) or f"region {cluster}"
        segment, share = Counter(segments[i] for i in members).most_common(1)[0]
        name = f"{words} · {segment}" if share >= 0.6 * len(members) else words
        used[name] += 1
        names[cluster] = name if used[name] == 1 else f"{name} ({used[name]})"
    return np.array([names.get(c, NOISE_LABEL) for c in clusters.tolist()], dtype=object)


def _clean(tokens: Sequence[str]) -> list[str]:
    """Tokens as a reader sees them (stripped; empty, whitespace and partial-UTF-8 tokens dropped)."""
    return [t.strip() for t in tokens if t.strip() and "\ufffd" not in t]


def neighbour_agreement(coordinates: np.ndarray, keys: Sequence[str | None], k: int = 5, draws: int = 1000,
                        seed: int = 0) -> dict[str, float | int]:
    """The share of (point, one of its k nearest map neighbours) pairs whose keys agree, against as many
    random pairs; points without a key are left out. Bootstrap 95 % intervals over points."""
    from sklearn.neighbors import NearestNeighbors

    keep = np.array([key is not None for key in keys])
    points, kept = coordinates[keep], np.array([key for key in keys if key is not None], dtype=object)
    if len(points) <= k + 1:
        return {"points": int(len(points)), "k": k, "neighbours": math.nan, "random": math.nan}
    _, nearest = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    near = (kept[nearest[:, 1:]] == kept[:, None]).mean(axis=1)  # per point: share of its neighbours agreeing
    rng = np.random.default_rng(seed)
    partners = rng.integers(0, len(points) - 1, size=(len(points), k))
    partners += partners >= np.arange(len(points))[:, None]  # never the point itself
    far = (kept[partners] == kept[:, None]).mean(axis=1)
    boot = rng.integers(0, len(points), size=(draws, len(points)))
    near_means, far_means = near[boot].mean(axis=1), far[boot].mean(axis=1)
    ratio = near_means / np.maximum(far_means, 1e-12)
    return {"points": int(len(points)), "k": k, "neighbours": float(near.mean()), "random": float(far.mean()),
            "neighbours_low": float(np.quantile(near_means, 0.025)), "neighbours_high": float(np.quantile(near_means, 0.975)),
            "random_low": float(np.quantile(far_means, 0.025)), "random_high": float(np.quantile(far_means, 0.975)),
            "ratio": float(near.mean() / max(far.mean(), 1e-12)), "ratio_low": float(np.quantile(ratio, 0.025)),
            "ratio_high": float(np.quantile(ratio, 0.975))}


REGION_PROMPT = """These are the labels of features of a language model that sit together in one region of a map:
{labels}
Name what the region is about in at most 5 words. Reply as JSON: {{"label": "<the region's name>"}}"""


def llm_region_names(names: np.ndarray, labels: Sequence[str], ask, most_labels: int = 20) -> tuple[np.ndarray, int]:
    """The regions of one level renamed by a language model from their members' labels (`ask(prompt) -> reply`);
    a region whose answer has no usable name keeps its token name. Returns (names, how many the model named)."""
    from thinklens.features.autointerp.replies import Unparsable, parse_explanation

    renamed: dict[str, str] = {}
    for region in sorted(set(names.tolist()) - {NOISE_LABEL}):
        members = [labels[i] for i in np.flatnonzero(names == region)]
        shown = "\n".join(f"- {label}" for label, _ in Counter(members).most_common(most_labels))
        prompt = REGION_PROMPT.format(labels=shown)
        try:
            renamed[region] = parse_explanation(ask(prompt), instructions=REGION_PROMPT).label
        except Unparsable:
            continue
    used: Counter = Counter()
    unique = {}
    for region, name in renamed.items():  # two regions given one name stay two regions
        used[name] += 1
        unique[region] = name if used[name] == 1 else f"{name} ({used[name]})"
    return np.array([unique.get(n, n) for n in names.tolist()], dtype=object), len(unique)
