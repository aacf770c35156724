"""The feature map: UMAP of the SAE's features, drawn with DataMapPlot, with named regions.

Each live feature is a point. The layout is a UMAP (cosine) of either the decoder directions
(`decoder`: features that write the same direction sit close) or of where the features fire
(`coactivation`: each feature's stored examples counted per trace, tf-idf weighted: features that fire
in the same traces sit close). The map is cut into regions at a few resolutions and each is named
(`map_regions`); the page colours by region, with the segment where each feature fires most as the
other colouring. `map.json` records how often map neighbours share a top token, a label or a segment
against random pairs: how much the layout means. Points carry hover text: id, label, top activating
tokens, density. Dead features (never fired while indexing) are left out and counted. The interactive page embeds its scripts
and fonts (DataMapPlot's offline mode, filled from the npm registry by `web_assets`), so it opens
without a network; a static PNG is drawn with matplotlib beside it.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from thinklens.analysis.map_regions import default_min_sizes, name_regions, neighbour_agreement, region_levels
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
    layout: Literal["decoder", "coactivation"] = Field(
        default="coactivation", description="UMAP of where the features fire (their stored examples per trace), "
                                            "or of their decoder directions.")
    region_sizes: tuple[int, ...] | None = Field(
        default=None, description="HDBSCAN minimum cluster sizes, fine to coarse, one label layer each "
                                  "(default: from the number of live features).")
    agreement_k: int = Field(default=5, ge=1, description="Map neighbours per point in the agreement measure.")
    namer_base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint that names the regions "
                                                                 "from their members' labels (default: token names).")
    namer_model: str | None = Field(default=None, description="Model that names the regions (with --namer-base-url).")
    namer_api_key_env: str | None = Field(default="OPENAI_API_KEY", description="Variable holding the namer's key.")

    @model_validator(mode="after")
    def _namer_whole(self) -> MapConfig:
        if (self.namer_base_url is None) != (self.namer_model is None):
            raise ValueError("naming regions by a model needs both --namer-base-url and --namer-model")
        return self


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
    regions: list[str]  # the region's name at each level, fine to coarse


@dataclass
class FeatureMap:
    """The map's points and its counts."""

    title: str
    features: int
    live: int
    dead: int
    points: list[MapPoint]
    layout: str = "coactivation"
    region_sizes: list[int] = field(default_factory=list)
    regions: list[int] = field(default_factory=list)  # regions per level
    agreement: dict[str, dict[str, float | int]] = field(default_factory=dict)  # key → neighbours vs random
    named_by_model: list[int] = field(default_factory=list)  # per level: regions the namer named (the rest: tokens)

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
    if config.layout == "coactivation":
        with FeatureDB(db_path) as db:
            vectors = _coactivation(db, live)
    else:
        vectors = sae.W_dec.detach().float()[live].numpy()  # (live, d_in)
    coordinates = _umap(vectors, config)
    segments = [_dominant_segment(stats[f][2:], comparable) for f in live]
    tokens = [top_tokens.get(f, []) for f in live]
    sizes = list(config.region_sizes or default_min_sizes(len(live)))
    levels = region_levels(coordinates, sizes, config.seed)
    names = [name_regions(level, tokens, segments) for level in levels]
    named_by_model = []
    if config.namer_base_url is not None:
        names, named_by_model = _model_names(config, names, [stats[f][1] or "" for f in live])
    points = [
        MapPoint(feature_id=f, x=float(x), y=float(y), segment=segments[i], label=stats[f][1] or f"feature {f}",
                 top_tokens=tokens[i], density=float(stats[f][0]), regions=[str(level[i]) for level in names])
        for i, (f, (x, y)) in enumerate(zip(live, coordinates.tolist(), strict=True))
    ]
    keys = {"top token": [(t[0].strip().lower() if t else None) for t in tokens],
            "label": [stats[f][1] for f in live], "segment": segments}
    agreement = {name: neighbour_agreement(coordinates, values, k=config.agreement_k, seed=config.seed)
                 for name, values in keys.items()}
    title = config.title or f"{meta.get('model')} · layer {meta.get('layer')} · {meta.get('sae_arch')} {sae.config.d_sae}"
    return FeatureMap(title=title, features=sae.config.d_sae, live=len(live), dead=sae.config.d_sae - len(live),
                      points=points, layout=config.layout, region_sizes=sizes,
                      regions=[len(set(level.tolist()) - {-1}) for level in levels], agreement=agreement,
                      named_by_model=named_by_model)


def _model_names(config: MapConfig, names: list[np.ndarray], labels: list[str]) -> tuple[list[np.ndarray], list[int]]:
    """Every level's regions named by the configured model from their members' labels."""
    from thinklens.analysis.map_regions import llm_region_names
    from thinklens.features.autointerp.client import ChatClient

    client = ChatClient(config.namer_base_url, config.namer_model, config.namer_api_key_env, max_tokens=64)
    renamed = [llm_region_names(level, labels, client.ask) for level in names]
    return [level for level, _ in renamed], [count for _, count in renamed]


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


def _coactivation(db: FeatureDB, live: list[int]):
    """Each live feature's stored examples counted per trace, tf-idf weighted (a sparse live × traces matrix)."""
    from scipy.sparse import csr_matrix

    row_of = {f: i for i, f in enumerate(live)}
    rows, columns, counts = [], [], []
    for feature, sequence, count in db.connection.execute(
            "SELECT feature_id, sequence_id, count(*) FROM activations GROUP BY feature_id, sequence_id"):
        if feature in row_of:
            rows.append(row_of[feature])
            columns.append(sequence)
            counts.append(count)
    matrix = csr_matrix((np.asarray(counts, dtype=np.float32), (rows, columns)),
                        shape=(len(live), max(columns, default=0) + 1))
    features_per_trace = np.asarray((matrix > 0).sum(axis=0)).ravel()
    idf = np.log((1 + len(live)) / (1 + features_per_trace)).astype(np.float32) + 1
    return csr_matrix(matrix.multiply(idf[None, :]))


def _dominant_segment(rates: tuple, comparable: list[bool]) -> str:
    """The segment with the highest firing rate, among those with enough tokens for a rate to mean much."""
    values = [float(rate) if rate is not None and ok else -1.0 for rate, ok in zip(rates, comparable, strict=True)]
    return SEGMENT_NAMES[int(np.argmax(values))] if max(values) > 0 else "unknown"


def _umap(vectors, config: MapConfig) -> np.ndarray:
    """2-D UMAP of the features' vectors (dense decoder directions, or sparse co-activation rows), cosine."""
    import umap  # heavy import (numba): only when a map is drawn

    if isinstance(vectors, np.ndarray):
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    reducer = umap.UMAP(n_neighbors=config.n_neighbors, min_dist=config.min_dist, metric="cosine",
                        random_state=config.seed, n_components=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": reproducibility wins
        return np.asarray(reducer.fit_transform(vectors), dtype=np.float32)


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
    _name_largest_regions(axis, feature_map_, coordinates)
    axis.set_xticks([])
    axis.set_yticks([])
    what = "decoder directions" if feature_map_.layout == "decoder" else "co-activation per trace"
    axis.set_title(f"{feature_map_.title}\n{feature_map_.live} live features "
                   f"({feature_map_.dead} dead left out), UMAP of {what} (cosine)", fontsize=9)
    return save_figure(figure, path)


def _name_largest_regions(axis, feature_map_: FeatureMap, coordinates: np.ndarray, most: int = 12) -> None:
    """The middle level's largest regions (the coarsest has too few to read by), named at their medians."""
    from thinklens.analysis.map_regions import NOISE_LABEL

    if not feature_map_.points or not feature_map_.points[0].regions:
        return
    level = len(feature_map_.points[0].regions) // 2
    names = np.array([p.regions[level] for p in feature_map_.points], dtype=object)
    for name, _ in Counter(n for n in names.tolist() if n != NOISE_LABEL).most_common(most):
        x, y = np.median(coordinates[names == name], axis=0)
        axis.text(x, y, name, fontsize=7, ha="center", va="center",
                  bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.7, "linewidth": 0})
