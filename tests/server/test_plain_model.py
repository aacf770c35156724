"""`serve --model SPEC`: a model on its own, as it ships (its chat template, no thinking, nothing to steer),
as the explainer of `thinklens explain`."""

from __future__ import annotations

import openai
import pytest
from pydantic import ValidationError

from tests.server.conftest import http, live_server
from thinklens.server.app import load_served
from thinklens.server.config import ServeConfig


@pytest.fixture(scope="module")
def plain(tiny_models):
    config = ServeConfig(model=str(tiny_models["llama"]), device="cpu", max_tokens=32)
    with live_server(config, load_served(config)) as url:
        yield url, str(tiny_models["llama"])


@pytest.mark.integration
def test_a_model_without_a_run_answers_and_refuses_steering(plain):
    url, model = plain
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    (listed,) = client.models.list().data
    assert listed.id == model
    messages = [{"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=5, temperature=0,
                                           logprobs=True, top_logprobs=2)
    assert reply.usage.completion_tokens == 5 and len(reply.choices[0].logprobs.content) == 5
    with pytest.raises(openai.BadRequestError, match="no SAE to steer with"):
        client.chat.completions.create(model=f"{model}+f3@4", messages=messages, max_tokens=2)
    status, runs = http("GET", f"{url}/api/runs")
    assert (status, runs) == (200, [])


def test_a_plain_model_is_served_alone(tmp_path):
    with pytest.raises(ValidationError, match="on its own"):
        ServeConfig(model="smollm2", runs=(tmp_path,))
    with pytest.raises(ValidationError, match="--model SPEC"):
        ServeConfig()
