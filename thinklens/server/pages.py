"""The HTML pages: rendered on the server from the same data as `/api/`, with a little JavaScript.

No build step and no CDN: the templates and `static/` ship in the package. The map is the run's own
DataMapPlot page (`map.html`, every asset embedded) with one script added as it is served, so that
a click on a point opens that feature's page; the file itself is never changed.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape

from thinklens.data.segments import SEGMENT_NAMES
from thinklens.server import api
from thinklens.server.app import NotFound
from thinklens.server.catalog import FeatureQuery
from thinklens.steering.engine import POLICIES

HERE = Path(__file__).parent
router = APIRouter(include_in_schema=False)
_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, Undefined) or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _pct(value: Any, digits: int = 1) -> str:
    return "—" if value is None or isinstance(value, Undefined) else f"{100 * value:.{digits}f} %"


def _max_rate(feature: dict[str, Any]) -> float:
    return max((rate or 0.0) for rate in feature["segment_rates"].values())


def _histogram_svg(histogram: dict[str, list[float]], width: int = 320, height: int = 110) -> str:
    """The activation histogram as an inline SVG (log-spaced bins, as index stores them)."""
    counts, edges = histogram.get("counts") or [], histogram.get("edges") or []
    if not counts:
        return '<p class="muted">no activations stored</p>'
    peak, bar = max(counts) or 1, (width - 10) / len(counts)
    rects = "".join(
        f'<rect x="{5 + i * bar:.1f}" y="{height - 20 - (height - 30) * c / peak:.1f}" width="{max(bar - 1, 1):.1f}" '
        f'height="{(height - 30) * c / peak:.1f}"><title>{_fmt(edges[i], 3)}–{_fmt(edges[i + 1], 3) if i + 1 < len(edges) else "…"}: '
        f'{c:,} tokens</title></rect>' for i, c in enumerate(counts))
    labels = (f'<text x="5" y="{height - 5}">{_fmt(edges[0], 2)}</text>'
              f'<text x="{width - 5}" y="{height - 5}" text-anchor="end">{_fmt(edges[-1], 2)}</text>')
    return f'<svg class="histogram" id="histogram" width="{width}" height="{height}">{rects}{labels}</svg>'


def _examples_html(examples: list[dict[str, Any]], peak: float) -> str:
    """Each example as a row of tokens shaded by the feature's activation (hover: value, segment, text).
    Built here rather than in a template loop: a page holds thousands of tokens."""
    escape, rows = html.escape, []
    for example in examples:
        spans = "".join(
            f'<span class="tok{" at" if token["idx"] == example["token_idx"] else ""}" data-act="{token["activation"]}" '
            f'title="{_fmt(token["activation"], 3)} · {token["segment"]} · {escape(token["text"])}" '
            f'style="--a: {min(token["activation"] / (peak or 1), 1):.3f}">{escape(_visible(token["text"]))}</span>'
            for token in example["tokens"])
        rows.append(f'<div class="example" data-strength="{example["strength"]}"><span class="value">'
                    f'{_fmt(example["strength"], 2)}</span><span class="context">{spans}</span></div>')
    return "".join(rows)


def _visible(text: str | None) -> str:
    return (text or "").replace("\n", "⏎\n")


_env.filters["visible"] = _visible
_env.globals.update(fmt=_fmt, pct=_pct, max_rate=_max_rate, histogram_svg=_histogram_svg,
                    examples_html=_examples_html)


def _page(name: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(name).render(**context))


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    state = request.app.state.served
    return _page("index.html", run=None, summaries=[run.summary() for run in state.runs.values()],
                 model=api.model_info(request))


@router.get("/runs/{run}", response_class=HTMLResponse)
def run_page(request: Request, run: str) -> HTMLResponse:
    return _page("run.html", run=run, s=request.app.state.served.run(run).summary())


@router.get("/runs/{run}/features", response_class=HTMLResponse)
def features_page(request: Request, run: str, q: str = Query("", max_length=200), sort: str = "density",
                  segment: str = "", contrast: str = "", offset: int = Query(0, ge=0, le=api.MAX_ID)) -> HTMLResponse:
    served_run = request.app.state.served.run(run)
    query = FeatureQuery(q=q, sort=sort, segment=segment or None, contrast=contrast or None, offset=offset, limit=50)
    page = served_run.features(query)

    def page_url(at: int) -> str:
        params = {"q": q, "sort": sort, "segment": segment, "contrast": contrast, "offset": max(0, at)}
        return f"/runs/{run}/features?" + urlencode({k: v for k, v in params.items() if v not in ("", None)})

    return _page("features.html", run=run, query=query, page=page, segments=SEGMENT_NAMES,
                 contrasts=served_run.contrasts, page_url=page_url)


@router.get("/runs/{run}/features/{feature_id}", response_class=HTMLResponse)
def feature_page(request: Request, run: str, feature_id: int) -> HTMLResponse:
    return _page("feature.html", run=run, f=api.feature(request, run, feature_id))


@router.get("/runs/{run}/map", response_class=HTMLResponse)
def map_page(request: Request, run: str) -> HTMLResponse:
    served_run = request.app.state.served.run(run)
    path = served_run.rundir.map_html if served_run.rundir is not None else None
    if path is None or not path.is_file():
        raise NotFound(f"run {run} has no map: `thinklens map {run}` draws it")
    ids = [point["feature_id"] for point in served_run.map_points()]
    script = (f"<script>(() => {{ const ids = {json.dumps(ids)}; const run = {json.dumps(run)};"
              "function hook() { if (typeof datamap === 'undefined' || !datamap.deckgl) { setTimeout(hook, 200); return; }"
              " datamap.deckgl.setProps({onClick: (info) => { if (info && info.picked && info.layer && "
              "info.layer.id === 'dataPointLayer' && info.index >= 0 && "
              "info.index < ids.length) { window.location.href = `/runs/${run}/features/${ids[info.index]}`; } }});"
              " document.body.dataset.clickable = '1'; } hook(); })();</script>")
    page = path.read_text(encoding="utf-8")
    cut = page.rfind("</body>")
    return HTMLResponse(page[:cut] + script + page[cut:] if cut >= 0 else page + script)


@router.get("/runs/{run}/report")
def report_page(request: Request, run: str) -> FileResponse:
    rundir = request.app.state.served.run(run).rundir
    path = rundir.report_html if rundir is not None else None
    if path is None or not path.is_file():
        raise NotFound(f"run {run} has no report: `thinklens report {run}` writes it")
    return FileResponse(path, media_type="text/html")


def _model_context(request: Request, run: str) -> dict[str, Any]:
    state = request.app.state.served
    served_run = state.run(run)
    loaded = state.service is not None and state.model_run == run
    why = state.model_error if state.service is None else (
        None if loaded else f"the model serves run {state.model_run}: open its playground")
    return {"run": run, "model_loaded": loaded, "why_not": why or "", "max_chars": state.config.max_text_chars,
            "max_tokens": state.config.max_tokens, "n_features": served_run.n_features, "model_id": state.model_id,
            "contrasts": served_run.contrasts}


@router.get("/runs/{run}/explain", response_class=HTMLResponse)
def explain_page(request: Request, run: str) -> HTMLResponse:
    return _page("explain.html", **_model_context(request, run))


@router.get("/runs/{run}/playground", response_class=HTMLResponse)
def playground_page(request: Request, run: str, feature: int | None = Query(None, ge=0, le=api.MAX_ID),
                    strength: float = Query(api.DEFAULT_STRENGTH, ge=-1000, le=1000)) -> HTMLResponse:
    return _page("playground.html", feature="" if feature is None else feature, strength=strength,
                 policies=POLICIES, **_model_context(request, run))
