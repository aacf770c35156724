"""map.html: the feature map as one self-contained DataMapPlot page (scripts and fonts embedded)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from thinklens.analysis.featuremap import FeatureMap
from thinklens.analysis.map_regions import NOISE_LABEL
from thinklens.analysis.web_assets import (
    ensure_datamapplot_assets,
    font_preload_html,
    offline_datamapplot,
    strip_remote_references,
)
from thinklens.files import atomic_path


def write_map_html(feature_map_: FeatureMap, path: Path) -> Path:
    """Render the map with DataMapPlot in offline mode and write it to `path` with no remote reference."""
    import datamapplot  # heavy import (~10 s: numba, bokeh): only when a map is drawn

    points = feature_map_.points
    segments = np.array([p.segment for p in points], dtype=object)
    layers = [np.array([p.regions[i] for p in points], dtype=object) for i in range(len(points[0].regions))]
    layers = [layer for layer in layers if (layer != NOISE_LABEL).any()] or [segments]  # a level with no region: none
    with offline_datamapplot(ensure_datamapplot_assets()) as offline, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figure = datamapplot.create_interactive_plot(
            feature_map_.coordinates,
            *layers,  # fine to coarse: the labels shown change as one zooms
            hover_text=np.array(feature_map_.hover_text(), dtype=object),
            title=feature_map_.title,
            sub_title=f"{feature_map_.live} live features ({feature_map_.dead} dead left out), by region",
            noise_label=NOISE_LABEL,
            font_family="Roboto",
            enable_search=True,
            inline_data=True,
            darkmode=False,
            point_radius_min_pixels=2.5,  # visible dots even on a small map
            custom_html=font_preload_html(),  # labels wait for their Roboto weight instead of a serif fallback
            colormap_rawdata=[segments, np.log10(np.array([max(p.density, 1e-9) for p in points]))],
            colormap_metadata=[{"field": "segment", "description": "Segment where it fires most", "kind": "categorical",
                                "cmap": "tab10"},
                               {"field": "density", "description": "log10 density", "kind": "continuous",
                                "cmap": "viridis"}],
            **offline,
        )
    html = strip_remote_references(str(figure))
    path = Path(path)
    with atomic_path(path) as temp:
        temp.write_text(html, encoding="utf-8")
    return path
