"""A bounded fuzz of the live API: random and hostile parameters, a few thousand requests.

No answer may be a 5xx or carry a traceback, every error is the one JSON shape, and the server still
answers correctly at the end.
"""

from __future__ import annotations

import json
import random
import urllib.parse

from tests.server.conftest import http

HOSTILE = ["", "-1", "0", "1", "3", "99999999999999999999", "1e309", "NaN", "-Infinity", "null", "[]", "{}", "true",
           "'; DROP TABLE features; --", "%00", "../../etc/passwd", "\u202e", "é×😀", "a" * 5000, "f0@1", "<script>"]
VALUES = [None, True, -1, 0, 1, 2**31, 2**64, 1e308, -0.0, 0.5, "", "x", "after_prefix", "index:3", [], {}, [1, 2],
          {"feature": 0, "strength": 1}, "a" * 3000]


def _get(rng: random.Random) -> str:
    path = rng.choice(["/api/runs/tiny/features", "/api/runs/tiny/features/{v}", "/api/runs/{v}", "/runs/tiny/features",
                       "/runs/tiny/features/{v}", "/api/runs/tiny/map", "/runs/{v}/map", "/v1/models", "/{v}"])
    path = path.format(v=urllib.parse.quote(rng.choice(HOSTILE), safe=""))
    params = {key: rng.choice(HOSTILE) for key in rng.sample(["q", "sort", "segment", "contrast", "offset", "limit",
                                                              "window", "feature", "strength"], rng.randint(0, 4))}
    return path + ("?" + urllib.parse.urlencode(params) if params else "")


def _body(rng: random.Random, model: str) -> tuple[str, dict]:
    kind = rng.choice(["chat", "completion", "steer", "explain"])
    body: dict = {"chat": {"model": model, "messages": [{"role": "user", "content": "2+2?"}]},
                  "completion": {"model": model, "prompt": "one two"},
                  "steer": {"prompt": "2+2?", "steering": {"features": []}},
                  "explain": {"text": "two"}}[kind]
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(["model", "messages", "max_tokens", "temperature", "top_p", "seed", "stream", "steering",
                          "prompt", "n", "text", "top", "extra"])
        body[key] = rng.choice(VALUES + [model + rng.choice(["+f0@1", "+f-1@1", "+f0@1e400", ":x", "+c..@1"])])
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 3:
        body["max_tokens"] = 3  # keep generations short: the fuzz is about parameters, not the model
    body.setdefault("max_tokens", 2)
    path = {"chat": "/v1/chat/completions", "completion": "/v1/completions", "steer": "/api/runs/tiny/steer",
            "explain": "/api/runs/tiny/explain"}[kind]
    return path, body


def test_thousands_of_random_and_hostile_requests_never_break_the_server(server):
    rng = random.Random(0)
    model = http("GET", f"{server}/v1/models")[1]["data"][0]["id"]
    statuses: dict[int, int] = {}
    for i in range(2500):
        if i % 3:
            status, body = http("GET", server + _get(rng))
        else:
            path, payload = _body(rng, model)
            raw = json.dumps(payload).encode() if rng.random() > 0.1 else rng.choice([b"{", b"null", b"[1]", b"\xff"])
            status, body = http("POST", server + path, raw=raw)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (status, body)
        text = json.dumps(body) if isinstance(body, dict | list) else body
        assert "Traceback" not in text
        if status >= 400 and isinstance(body, dict):
            assert body["error"]["message"]
    assert statuses.get(200, 0) > 100 and sum(v for k, v in statuses.items() if 400 <= k < 500) > 100
    status, models = http("GET", f"{server}/v1/models")
    assert status == 200 and models["data"][0]["id"] == model
