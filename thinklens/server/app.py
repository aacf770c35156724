"""`create_app(ServeConfig)`: the FastAPI app of `thinklens serve`.

State lives on `app.state.served` (a `Served`): the runs, read-only, and the generation service of the
first run's model (None with `--no-model`). Errors are one JSON shape everywhere,
`{"error": {"message", "type", "param", "code"}}` (OpenAI's), with a 4xx for anything a request did
wrong and never a traceback; the routes live in `api`, `openai_api` and `pages`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from thinklens.errors import ThinklensError
from thinklens.server.catalog import ServedRun, UnknownFeature
from thinklens.server.config import ServeConfig
from thinklens.server.generation import Busy, GenerationService


@dataclass
class Served:
    """What the app serves: the runs by name, and the model (when loaded)."""

    config: ServeConfig
    runs: dict[str, ServedRun]
    service: GenerationService | None = None
    model_id: str = "model"
    model_error: str | None = None  # why there is no model, for the pages that need it
    model_run: str | None = None  # the run whose model and SAE generation uses

    def run(self, name: str) -> ServedRun:
        run = self.runs.get(name)
        if run is None:
            raise NotFound(f"no run named {name!r}: this server serves {sorted(self.runs)}")
        return run

    def need_model(self) -> GenerationService:
        if self.service is None:
            raise ModelUnavailable(self.model_error or "this server runs without a model (--no-model)")
        return self.service


class NotFound(ThinklensError):
    """An unknown run or page (404)."""


class ModelUnavailable(ThinklensError):
    """A request that needs the model on a server without one (503)."""


def load_served(config: ServeConfig) -> Served:
    """Open every run read-only and, unless `no_model`, the first run's model with its SAE."""
    runs = {}
    for root in config.runs:
        run = ServedRun(Path(root))
        runs[run.name] = run
    if config.ddb is not None:
        from thinklens.server.ddb import ReleaseRun

        release = ReleaseRun(config.ddb, config.autointerp)
        if release.name in runs:
            raise ThinklensError(f"the database {config.ddb} has the name of a served run: rename one of them")
        runs[release.name] = release
    served = Served(config, runs)
    if config.model is not None:
        return _plain_model(served)
    first = next(iter(runs.values()))
    served.model_id = str(first.meta.get("model") or "model")
    served.model_run = first.name
    if config.no_model or first.rundir is None:
        served.model_error = ("this server runs without a model (--no-model): restart without it to generate"
                              if config.no_model else "a release database comes without its model (DeepSeek-R1): "
                              "steering and explain-text need a run directory of a model you can load")
        return served
    from thinklens.steering.from_run import open_variant

    rundir = first.rundir
    variant = open_variant(rundir.traces, rundir.sae, rundir.features_db, [], device=config.device)
    served.service = GenerationService(variant, lambda: first.db, rundir.contrast_dir, capacity=config.capacity,
                                       timeout_s=config.timeout_s, model_id=served.model_id)
    return served


def _plain_model(served: Served) -> Served:
    """`--model`: the model alone, as it ships (its chat template, no thinking), with nothing to steer."""
    from thinklens.models.formats import make_format
    from thinklens.models.loader import ModelConfig, load_model
    from thinklens.steering.variant import Variant

    config = served.config
    loaded = load_model(ModelConfig(model=config.model, device=config.device))
    served.model_id, served.model_run = config.model, None
    served.service = GenerationService(Variant(loaded, fmt=make_format("chat")), lambda: None, None,
                                       capacity=config.capacity, timeout_s=config.timeout_s, model_id=config.model)
    return served


def create_app(config: ServeConfig, served: Served | None = None) -> FastAPI:
    """The app; `served` may be given already loaded (tests share one model between apps)."""
    from thinklens.server import api, openai_api, pages

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Iterator[None]:
        yield
        if app.state.served.service is not None and served is None:
            app.state.served.service.close()

    app = FastAPI(title="thinklens", description="Browse a run's SAE features, steer its model, and call the "
                  "steered model with any OpenAI client.", version="1", lifespan=lifespan)
    app.state.served = served or load_served(config)
    _error_handlers(app)
    app.include_router(api.router)
    app.include_router(openai_api.router)
    app.include_router(pages.router)
    pages.mount_static(app)
    return app


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _error_handlers(app: FastAPI) -> None:
    def reply(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
        return JSONResponse(error_body(message, kind, param), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problem = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path"))
        return reply(400, f"{where}: {problem.get('msg')}" if where else str(problem.get("msg")), "invalid_request_error",
                     where or None)

    @app.exception_handler(ValidationError)
    async def invalid_value(_request: Request, exc: ValidationError) -> JSONResponse:  # a model built in a route
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        return reply(400, f"{where}: {problem['msg']}" if where else problem["msg"], "invalid_request_error",
                     where or None)

    @app.exception_handler(ThinklensError)
    async def user_error(_request: Request, exc: ThinklensError) -> JSONResponse:
        status = {UnknownFeature: 404, NotFound: 404, Busy: 503, ModelUnavailable: 503}.get(type(exc), 400)
        return reply(status, str(exc), "not_found" if status == 404 else "invalid_request_error" if status == 400
                     else "unavailable")

    @app.exception_handler(concurrent.futures.TimeoutError)
    async def timeout(_request: Request, _exc: Exception) -> JSONResponse:
        return reply(504, "the request timed out waiting for the model", "timeout")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return reply(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def bug(_request: Request, exc: Exception) -> JSONResponse:
        return reply(500, f"internal error ({type(exc).__name__}): a bug in thinklens, please report it", "server_error")
