"""A real `thinklens serve` on localhost for the tests: uvicorn in a thread, on a free port.

One model load per module (the tiny Llama run's); each test talks HTTP to it, with the official
`openai` client where it is an OpenAI call.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from thinklens.server.app import create_app, load_served
from thinklens.server.config import ServeConfig


@contextmanager
def live_server(config: ServeConfig, served=None):
    """Serve the app of `config` on a free localhost port; yields its base URL."""
    app = create_app(config, served)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def http(method: str, url: str, body=None, raw: bytes | None = None, timeout: float = 60) -> tuple[int, dict | str]:
    """(status, decoded JSON or text) of one request; an HTTP error status is returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@pytest.fixture(scope="module")
def served_run(indexed_run, tmp_path_factory) -> Path:
    """A copy of the tiny indexed run with one contrast (tests check that serving it changes nothing)."""
    import shutil

    from thinklens.features.contrast import ContrastConfig
    from thinklens.pipeline.contrasts import contrast_in_run
    from thinklens.pipeline.rundir import RunDir

    run = tmp_path_factory.mktemp("served") / "tiny"
    shutil.copytree(indexed_run, run)
    contrast_in_run(ContrastConfig(a="operator=*", b="operator!=*", name="mul-vs-rest", bootstrap=20), RunDir(run),
                    progress=False)
    return run


@pytest.fixture(scope="module")
def served_state(served_run):
    """The loaded runs and model, shared by every server of the module."""
    config = ServeConfig(runs=(served_run,), capacity=2, max_tokens=64, max_text_chars=2000, timeout_s=60)
    return config, load_served(config)


@pytest.fixture(scope="module")
def server(served_state):
    config, served = served_state
    with live_server(config, served) as url:
        yield url
