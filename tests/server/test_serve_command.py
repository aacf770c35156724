"""`thinklens serve` as a user starts it: a subprocess that prints its address and answers there."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.server.conftest import http


def test_serve_command_prints_its_address_and_serves_without_a_model(indexed_run):
    process = subprocess.Popen([sys.executable, "-c", "from thinklens.cli import main; main()", "serve",
                                str(indexed_run), "--port", "0", "--no-model"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={"COLUMNS": "300",
                                                                                                 **_environment()})
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if "thinklens serve: " in line:
                url = line.split("thinklens serve: ")[1].split()[0]
        assert url and url.startswith("http://127.0.0.1:"), "no address printed"
        status, runs = http("GET", f"{url}/api/runs")
        assert status == 200 and runs[0]["name"] == indexed_run.name
        status, body = http("POST", f"{url}/v1/chat/completions",
                            {"model": runs[0]["model"], "messages": [{"role": "user", "content": "hi"}]})
        assert status == 503 and "--no-model" in body["error"]["message"]
        status, page = http("GET", f"{url}/runs/{indexed_run.name}/playground")
        assert status == 200 and "--no-model" in page  # the page says why it cannot generate
    finally:
        process.terminate()
        process.wait(timeout=20)


def _environment() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != "COLUMNS"}
