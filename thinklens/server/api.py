"""`/api/`: everything the pages show, as JSON (FastAPI documents it at `/docs`).

Reads go to the runs' read-only databases; the routes that need the model (explain, steer) go
through the generation service's bounded queue. `steer` streams server-sent events: the baseline's
tokens, then the steered ones, from the same seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from thinklens.errors import ThinklensError
from thinklens.server.catalog import MAX_PAGE, FeatureQuery, ServedRun
from thinklens.server.generation import Delta, Finished, GenerationJob
from thinklens.server.steering_request import Steering

router = APIRouter(prefix="/api", tags=["api"])
MAX_ID = 2**31
# A steering form starts at 2 × the feature's typical max activation: on the demo organism 4× already
# breaks many features (the playground screenshot in the README); `thinklens sweep` finds each one's range.
DEFAULT_STRENGTH = 2.0


def served(request: Request):
    return request.app.state.served


@router.get("/runs", summary="Every served run's summary")
def list_runs(request: Request) -> list[dict[str, Any]]:
    return [run.summary() for run in served(request).runs.values()]


@router.get("/runs/{run}", summary="One run's summary: model, layer, SAE metrics, findings")
def run_summary(request: Request, run: str) -> dict[str, Any]:
    return served(request).run(run).summary()


@router.get("/runs/{run}/features", summary="Features: FTS5 search, sort, segment filter, paging")
def list_features(
    request: Request, run: str,
    q: Annotated[str, Query(max_length=200, description="Words to find in labels, activating and logit tokens.")] = "",
    sort: Annotated[Literal["density", "max_activation", "firing_count", "feature_id", "enrichment", "contrast"],
                    Query(description="Order (descending); enrichment: the segment's rate over the mean rate.")]
    = "density",
    segment: Annotated[Literal["prompt", "prefix", "thinking", "answer"] | None,
                       Query(description="Only features firing most in this segment.")] = None,
    contrast: Annotated[str | None, Query(max_length=100, description="With sort=contrast: its name.")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> dict[str, Any]:
    return served(request).run(run).features(FeatureQuery(q, sort, segment, contrast, offset, limit))


@router.get("/runs/{run}/features/{feature_id}", summary="Everything a feature page shows")
def feature(request: Request, run: str, feature_id: int,
            window: Annotated[int, Query(ge=2, le=64, description="Context tokens around each example.")] = 24
            ) -> dict[str, Any]:
    state = served(request)
    served_run = state.run(run)
    data = served_run.feature(feature_id, window)
    data["decoder_neighbours"] = served_run.decoder_neighbours(feature_id)
    data["map_point"] = next((p for p in served_run.map_points() if p.get("feature_id") == feature_id), None)
    data["other_runs"] = [other.name for other in state.runs.values()
                          if other is not served_run and served_run.meta.get("sae_sha256") is not None
                          and other.meta.get("sae_sha256") == served_run.meta.get("sae_sha256")
                          and feature_id < other.n_features]
    data["steering"] = {"default_strength": DEFAULT_STRENGTH, "policy": "after_prefix",
                        "available": state.service is not None and state.model_run == run}
    return data


@router.get("/runs/{run}/map", summary="The feature map's points (x, y, segment, label)")
def map_points(request: Request, run: str) -> list[dict[str, Any]]:
    return served(request).run(run).map_points()


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    text: str = Field(min_length=1, description="Text to explain, token by token.")
    top: int = Field(default=5, ge=1, le=20, description="Features per token.")


@router.post("/runs/{run}/explain", summary="Each token's strongest features (model + SAE, server-side)")
def explain(request: Request, run: str, body: ExplainRequest) -> dict[str, Any]:
    state = served(request)
    served_run = state.run(run)
    service = state.need_model()
    if run != state.model_run:
        raise ThinklensError(f"the model serves run {state.model_run!r}; explain text there")
    _check_length(state, body.text, "text")
    from thinklens.features.explain import explain_text

    tokens = service.run_exclusive(
        lambda variant: explain_text(variant.loaded, variant.sae, body.text, top=body.top, layer=variant.layer))
    labels = served_run.label_of(sorted({f for token in tokens for f, _ in token.features}))
    return {"tokens": [{"token": t.token, "massive": t.massive,
                        "features": [{"feature_id": f, "activation": v, "label": labels.get(f, "")}
                                     for f, v in t.features]} for t in tokens]}


class SteerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(min_length=1, description="The user prompt.")
    steering: Steering = Field(description="Features (or a contrast) with strengths, and the position policy.")
    max_tokens: int = Field(default=128, ge=1, description="New tokens for each side.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="0: greedy.")
    top_p: float = Field(default=0.95, gt=0, le=1)
    seed: int = Field(default=0, ge=0, le=MAX_ID, description="The same for both sides.")


@router.post("/runs/{run}/steer", summary="Baseline and steered completions, streamed (server-sent events)")
def steer(request: Request, run: str, body: SteerRequest) -> StreamingResponse:
    state = served(request)
    served_run = state.run(run)
    service = state.need_model()
    if run != state.model_run:
        raise ThinklensError(f"the model serves run {state.model_run!r}; steer there")
    check_steering(state, served_run, body.steering, body.max_tokens)
    _check_length(state, body.prompt, "prompt")
    jobs = {side: GenerationJob(steering=steering, messages=({"role": "user", "content": body.prompt},),
                                max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                seed=body.seed)
            for side, steering in (("baseline", Steering()), ("steered", body.steering))}
    first = service.start(jobs["baseline"])  # Busy (503) now, before the stream starts

    def events() -> Iterator[str]:
        for side in ("baseline", "steered"):
            stream = first if side == "baseline" else service.start(jobs[side])
            for event in stream:
                if isinstance(event, Delta):
                    yield _sse({"side": side, "delta": event.text})
                elif isinstance(event, Finished):
                    yield _sse({"side": side, "done": {
                        "text": event.text, "finish_reason": event.finish_reason, "error": event.error,
                        "steered_from_token": event.steered_from_token, "steered_from_char": event.steered_from_char,
                        "completion_tokens": event.completion_tokens}})
        yield "data: [DONE]\n\n"

    return StreamingResponse(_guarded(events()), media_type="text/event-stream")


def _guarded(events: Iterator[str]) -> Iterator[str]:
    """A stream that ends with an error event instead of breaking the connection."""
    try:
        yield from events
    except ThinklensError as exc:
        yield _sse({"error": {"message": str(exc)}})
        yield "data: [DONE]\n\n"


@router.get("/model", summary="The served model: id, its run, limits, whether it is loaded")
def model_info(request: Request) -> dict[str, Any]:
    state = served(request)
    config = state.config
    return {"id": state.model_id, "run": state.model_run, "loaded": state.service is not None,
            "why_not": state.model_error, "max_tokens": config.max_tokens, "max_text_chars": config.max_text_chars,
            "capacity": config.capacity, "timeout_s": config.timeout_s}


def check_steering(state, served_run: ServedRun | None, steering: Steering, max_tokens: int) -> None:
    """Unknown features (404) and contrasts, steering a model served without a run, and a max_tokens above
    the server's bound (400)."""
    if served_run is None and not steering.empty:
        raise ThinklensError("this server serves a model without a run (--model): there is no SAE to steer with; "
                             "serve a run directory to steer")
    for edit in steering.features if served_run is not None else ():
        served_run.check_feature(edit.feature)
    if served_run is not None and steering.contrast is not None and steering.contrast.name not in served_run.contrasts:
        raise ThinklensError(f"no contrast {steering.contrast.name!r} in run {served_run.name}: "
                             f"it has {served_run.contrasts or 'none'}")
    if max_tokens > state.config.max_tokens:
        raise ThinklensError(f"max_tokens {max_tokens} is above this server's bound {state.config.max_tokens}")


def _check_length(state, text: str, what: str) -> None:
    if len(text) > state.config.max_text_chars:
        raise ThinklensError(f"{what} of {len(text)} characters is above this server's bound "
                             f"{state.config.max_text_chars}")


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"
