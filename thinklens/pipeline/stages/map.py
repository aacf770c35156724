"""map: UMAP of the SAE's features with named regions → RUN/map.html, RUN/map.png, RUN/analysis/map.json."""

from __future__ import annotations

from thinklens.analysis.featuremap import MapConfig
from thinklens.analysis.outputs import write_feature_map
from thinklens.pipeline.rundir import RunDir
from thinklens.pipeline.stage import Stage, StageResult


def run(config: MapConfig, rundir: RunDir, progress: bool = True) -> StageResult:
    """Draw the map unless it already maps this SAE, with these labels and settings."""
    result, skipped = write_feature_map(config, rundir.sae, rundir.features_db, rundir.map_html, rundir.map_png,
                                        rundir.analysis_json("map"))
    if skipped:
        return StageResult.nothing_to_do(f"{rundir.map_html} already maps this SAE with these settings")
    return StageResult(
        skipped=False,
        headline=f"map → {rundir.map_html}",
        facts={"features": f"{result['features']:,}", "live (mapped)": f"{result['live']:,}",
               "dead (left out)": f"{result['dead']:,}", "static": str(rundir.map_png)},
        written=[rundir.map_html, rundir.map_png, rundir.analysis_json("map")],
        resolved={"live": result["live"], "dead": result["dead"]},
    )


STAGE = Stage(
    name="map",
    config=MapConfig,
    run=run,
    help="UMAP of the SAE's features (where they fire, or their decoder directions) with named regions → "
         "RUN/map.html (DataMapPlot, works offline) and RUN/map.png.",
    reads=("sae", "features_db"),
    writes=("map_html", "map_png", "analysis_json:map"),
    options={"n_neighbors": "n_neighbors", "min_dist": "min_dist", "seed": "seed", "layout": "layout",
             "namer_base_url": "namer_base_url", "namer_model": "namer_model"},
)
