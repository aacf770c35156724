"""The feature map: UMAP of the SAE's decoder directions, drawn with DataMapPlot.

Each live feature is a point; features whose decoder directions are close in cosine sit close.
Points are coloured by the segment where the feature fires most (its firing rate per token is
highest there) and carry hover text: id, label, top activating tokens, density. Dead features
(never fired while indexing) are left out and counted. The interactive page embeds its scripts
and fonts (DataMapPlot's offline mode, filled from the npm registry by `web_assets`), so it opens
without a network; a static PNG is drawn with matplotlib beside it.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from thinklens.data.segments import SEGMENT_NAMES
from thinklens.errors import ThinklensError
from thinklens.features.db import FeatureDB
from thinklens.figures import pyplot, save_figure
from thinklens.sae.formats import load_sae

SEGMENT_COLOURS = {"prompt": "#4c72b0", "prefix": "#dd8452", "thinking": "#55a868", "answer": "#c44e52"}
TOP_TOKENS = 5


class MapConfig(BaseModel):
    """Settings of the feature map."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    n_neighbors: int = Field(default=15, ge=2, description="UMAP neighbours (larger: more global structure).")
    min_dist: float = Field(default=0.1, ge=0, description="UMAP minimum distance between points.")
    seed: int = Field(default=0, description="UMAP seed (a fixed seed makes the map reproducible).")
    min_segment_tokens: int = Field(
        default=100, ge=1, description="Tokens a segment needs before a feature can be said to fire most in it."
    )
    title: str | None = Field(default=None, description="Map title; default names the model, layer and SAE.")


@dataclass
class MapPoint:
    """One live feature on the map."""

    feature_id: int
    x: float
    y: float
    segment: str  # where it fires most
    label: str
    top_tokens: list[str]
    density: float


@dataclass
class FeatureMap:
    """The map's points and its counts."""

    title: str
    features: int
    live: int
    dead: int
    points: list[MapPoint]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def coordinates(self) -> np.ndarray:
        return np.array([[p.x, p.y] for p in self.points], dtype=np.float32).reshape(-1, 2)

    def hover_text(self) -> list[str]:
        return [
            f"#{p.feature_id} {p.label}\ntop tokens: {' '.join(repr(t) for t in p.top_tokens)}\n"
            f"density {p.density:.2e} · fires most in {p.segment}"
            for p in self.points
        ]


def feature_map(sae_dir: Path, db_path: Path, config: MapConfig) -> FeatureMap:
    """Lay out the live features of the SAE in `sae_dir` (liveness and labels from `db_path`)."""
    sae = load_sae(sae_dir)
    with FeatureDB(db_path) as db:
        meta = db.meta()
        stats = _feature_stats(db)
        top_tokens = _top_tokens(db)
        segment_tokens = dict(db.connection.execute("SELECT segment, count(*) FROM token_ids GROUP BY segment"))
    comparable = [segment_tokens.get(s, 0) >= config.min_segment_tokens for s in range(len(SEGMENT_NAMES))]
    live = [f for f in range(sae.config.d_sae) if stats.get(f, (0,))[0] > 0]
    if len(live) <= config.n_neighbors:
        raise ThinklensError(
            f"only {len(live)} live features, too few for a map with --n-neighbors {config.n_neighbors}: "
            "train a wider SAE or index more tokens"
        )
    directions = sae.W_dec.detach().float()[live].numpy()  # (live, d_in)
    coordinates = _umap(directions, config)
    points = [
        MapPoint(feature_id=f, x=float(x), y=float(y), segment=_dominant_segment(stats[f][2:], comparable),
                 label=stats[f][1] or f"feature {f}", top_tokens=top_tokens.get(f, []), density=float(stats[f][0]))
        for f, (x, y) in zip(live, coordinates.tolist(), strict=True)
    ]
    title = config.title or f"{meta.get('model')} · layer {meta.get('layer')} · {meta.get('sae_arch')} {sae.config.d_sae}"
    return FeatureMap(title=title, features=sae.config.d_sae, live=len(live), dead=sae.config.d_sae - len(live),
                      points=points)


def _feature_stats(db: FeatureDB) -> dict[int, tuple]:
    """feature -> (density, label, rate per segment...)."""
    rates = ", ".join(f"f.rate_{name}" for name in SEGMENT_NAMES)
    rows = db.connection.execute(
        f"SELECT f.feature_id, f.density, a.label, {rates} FROM features f LEFT JOIN autointerp a USING (feature_id)"
    )
    return {row[0]: row[1:] for row in rows}


def _top_tokens(db: FeatureDB) -> dict[int, list[str]]:
    """feature -> its most frequent activating tokens among the stored top examples."""
    counts: dict[int, Counter] = {}
    rows = db.connection.execute(
        """SELECT a.feature_id, v.decoded_token FROM activations a
           JOIN token_ids t ON t.sequence_id = a.sequence_id AND t.token_idx = a.token_idx
           JOIN vocab v ON v.token = t.token"""
    )
    for feature, text in rows:
        counts.setdefault(feature, Counter())[text] += 1
    return {feature: [text for text, _ in counter.most_common(TOP_TOKENS)] for feature, counter in counts.items()}


def _dominant_segment(rates: tuple, comparable: list[bool]) -> str:
    """The segment with the highest firing rate, among those with enough tokens for a rate to mean much."""
    values = [float(rate) if rate is not None and ok else -1.0 for rate, ok in zip(rates, comparable, strict=True)]
    return SEGMENT_NAMES[int(np.argmax(values))] if max(values) > 0 else "unknown"


def _umap(directions: np.ndarray, config: MapConfig) -> np.ndarray:
    """2-D UMAP of the unit decoder directions under cosine distance."""
    import umap  # heavy import (numba): only when a map is drawn

    directions = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    reducer = umap.UMAP(n_neighbors=config.n_neighbors, min_dist=config.min_dist, metric="cosine",
                        random_state=config.seed, n_components=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": reproducibility wins
        return np.asarray(reducer.fit_transform(directions), dtype=np.float32)


def plot_map(feature_map_: FeatureMap, path: Path) -> Path:
    """The static map: one dot per live feature, coloured by the segment where it fires most."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 7))
    coordinates = feature_map_.coordinates
    segments = np.array([p.segment for p in feature_map_.points])
    for segment in [*SEGMENT_NAMES, "unknown"]:
        chosen = segments == segment
        if chosen.any():
            axis.scatter(coordinates[chosen, 0], coordinates[chosen, 1], s=6, alpha=0.8,
                         color=SEGMENT_COLOURS.get(segment, "#999999"), label=f"{segment} ({int(chosen.sum())})")
    axis.legend(title="fires most in", fontsize=8, markerscale=2)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(f"{feature_map_.title}\n{feature_map_.live} live features "
                   f"({feature_map_.dead} dead left out), UMAP of decoder directions (cosine)", fontsize=9)
    return save_figure(figure, path)
