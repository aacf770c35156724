"""`thinklens serve`: a feature browser, a steering playground and an OpenAI-compatible steered model.

    from thinklens.server import ServeConfig, serve
    serve(ServeConfig(runs=["runs/demo"]))          # http://127.0.0.1:8000

`thinklens.server.app.create_app(config)` gives the FastAPI app itself (to mount, or test).
"""

from __future__ import annotations

from thinklens.server.config import ServeConfig

__all__ = ["ServeConfig", "serve"]


def serve(config: ServeConfig, on_ready=None) -> None:
    """Load the runs (and the model), then serve until interrupted. `on_ready(url)` is told the address."""
    import uvicorn

    from thinklens.server.app import create_app

    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    if on_ready is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets=sockets)
            port = server.servers[0].sockets[0].getsockname()[1] if server.servers else config.port
            on_ready(f"http://{config.host}:{port}")

        server.startup = startup
    server.run()
