"""map.html: the feature map as one self-contained DataMapPlot page (scripts and fonts embedded)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from thinklens.analysis.featuremap import SEGMENT_COLOURS, FeatureMap
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

    segments = np.array([p.segment for p in feature_map_.points], dtype=object)
    with offline_datamapplot(ensure_datamapplot_assets()) as offline, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figure = datamapplot.create_interactive_plot(
            feature_map_.coordinates,
            segments,
            hover_text=np.array(feature_map_.hover_text(), dtype=object),
            title=feature_map_.title,
            sub_title=f"{feature_map_.live} live features ({feature_map_.dead} dead left out), "
                      "coloured by the segment where each fires most",
            label_color_map={**SEGMENT_COLOURS, "unknown": "#999999"},
            font_family="Roboto",
            enable_search=True,
            inline_data=True,
            darkmode=False,
            point_radius_min_pixels=2.5,  # visible dots even on a small map
            custom_html=font_preload_html(),  # labels wait for their Roboto weight instead of a serif fallback
            **offline,
        )
    html = strip_remote_references(str(figure))
    path = Path(path)
    with atomic_path(path) as temp:
        temp.write_text(html, encoding="utf-8")
    return path
