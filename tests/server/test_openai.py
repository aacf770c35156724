"""The OpenAI-compatible endpoint with the official `openai` client, the model name grammar, the queue."""

from __future__ import annotations

import threading

import openai
import pytest

from tests.server.conftest import http, live_server
from thinklens.errors import ThinklensError
from thinklens.server.steering_request import Steering, parse_model_name

QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client):
    (model,) = client.models.list().data
    return model.id


def test_chat_completion_and_its_stream_are_the_same_text(client, model_id):
    reply = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=12, temperature=0)
    text = reply.choices[0].message.content
    assert text and reply.usage.completion_tokens == 12 and reply.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=12, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_steered_and_unsteered_agree_exactly_until_the_policy_starts(client, model_id):
    plain = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=16, temperature=0)
    for policy, start in (("first_token", 0), ("index:", None)):
        name = f"{model_id}+f0@60:{policy}" if start is not None else None
        if name is None:  # an absolute index: the prompt's length plus five generated tokens
            name = f"{model_id}+f0@60:index:{plain.usage.prompt_tokens + 5}"
        steered = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=16, temperature=0)
        extra = steered.model_extra["thinklens"]
        assert extra["steered_from_token"] == (0 if start == 0 else 5)
        cut = extra["steered_from_char"]
        before, after = plain.choices[0].message.content, steered.choices[0].message.content
        assert after[:cut] == before[:cut]
        assert after != before  # 60 × the feature's typical maximum changes what follows


def test_steering_in_the_body_wins_over_the_name(client, model_id):
    reply = client.chat.completions.create(
        model=f"{model_id}+f1@3", messages=QUESTION, max_tokens=4, temperature=0,
        extra_body={"steering": {"features": [{"feature": 2, "strength": 5, "mode": "clamp"}], "policy": "thinking"}})
    applied = reply.model_extra["thinklens"]["steering"]
    assert applied["features"] == [{"feature": 2, "strength": 5.0, "mode": "clamp"}] and applied["policy"] == "thinking"


def test_text_completion_continues_the_raw_prompt(client, model_id):
    reply = client.completions.create(model=model_id, prompt="One, two, three,", max_tokens=5, temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens == 5
    streamed = list(client.completions.create(model=model_id, prompt="One, two, three,", max_tokens=5, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == reply.choices[0].text


@pytest.mark.parametrize("kwargs, error, message", [
    ({"model": "gpt-4"}, openai.BadRequestError, "unknown model 'gpt-4'"),
    ({"model": "{model}+f0@nan"}, openai.BadRequestError, "cannot read 'f0@nan'"),
    ({"model": "{model}+f0@1e30"}, openai.BadRequestError, "strength"),
    ({"model": "{model}+f99999@1"}, openai.NotFoundError, "feature 99999 does not exist"),
    ({"model": "{model}+f0@1:sideways"}, openai.BadRequestError, "position policy"),
    ({"max_tokens": 100_000}, openai.BadRequestError, "above this server's bound"),
    ({"temperature": 5}, openai.BadRequestError, "temperature"),
    ({"messages": [{"role": "user", "content": "x" * 3000}]}, openai.BadRequestError, "above this server's bound"),
])
def test_bad_openai_requests_get_a_clear_4xx(client, model_id, kwargs, error, message):
    arguments = {"model": model_id, "messages": QUESTION, "max_tokens": 2, **kwargs}
    arguments["model"] = arguments["model"].format(model=model_id)
    with pytest.raises(error) as raised:
        client.chat.completions.create(**arguments)
    assert message in str(raised.value)


def test_model_name_grammar_round_trips():
    steering = parse_model_name("m+f12@-2.5+f40*0.5+f7=3+cops.mul-vs-rest@1:thinking", "m")
    assert [(e.feature, e.strength, e.mode) for e in steering.features] == [(12, -2.5, "add"), (40, 0.5, "scale"),
                                                                            (7, 3.0, "clamp")]
    assert steering.contrast.name == "ops.mul-vs-rest" and steering.policy == "thinking"
    assert parse_model_name(steering.model_name("m"), "m") == steering
    assert parse_model_name("m+f1@2:index:40", "m").policy == "index:40"
    assert parse_model_name("m", "m") == Steering()
    for bad in ("m+f1", "m+f1@", "m+x1@2", "m+f1@2+cA@1+cB@1", "m" + "+f1@1" * 9, "n+f1@1"):
        with pytest.raises(ThinklensError):
            parse_model_name(bad, "m")


def test_a_full_queue_answers_503_and_the_server_keeps_serving(served_state):
    config, served = served_state
    small = config.model_copy(update={"capacity": 1})
    service = served.service
    original = service.capacity, service._slots
    service.capacity, service._slots = 1, threading.BoundedSemaphore(1)
    try:
        with live_server(small, served) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            stream = client.chat.completions.create(model=served.model_id, messages=QUESTION, max_tokens=60,
                                                    temperature=0, stream=True)
            first = next(iter(stream))  # the slot is taken while this stream runs
            assert first.choices[0].delta.role == "assistant"
            with pytest.raises(openai.InternalServerError) as busy:  # the client's class for any 5xx
                client.chat.completions.create(model=served.model_id, messages=QUESTION, max_tokens=2)
            assert busy.value.status_code == 503 and "busy" in str(busy.value)
            stream.close()  # the reader goes away: the job stops at its next token and frees the slot
            for _ in range(100):
                status, _ = http("POST", f"{url}/v1/chat/completions",
                                 {"model": served.model_id, "messages": QUESTION, "max_tokens": 1})
                if status == 200:
                    break
            assert status == 200
    finally:
        service.capacity, service._slots = original


def test_a_contrast_direction_steers_and_its_features_sort_the_list(client, model_id, server):
    plain = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=12, temperature=0)
    steered = client.chat.completions.create(model=f"{model_id}+cmul-vs-rest@40:first_token", messages=QUESTION,
                                             max_tokens=12, temperature=0)
    assert steered.model_extra["thinklens"]["steering"]["contrast"] == {"name": "mul-vs-rest", "strength": 40.0}
    assert steered.model_extra["thinklens"]["steered_from_token"] == 0
    assert steered.choices[0].message.content != plain.choices[0].message.content
    status, page = http("GET", f"{server}/api/runs/tiny/features?sort=contrast&contrast=mul-vs-rest&limit=5")
    assert status == 200 and page["total"] > 0


def test_a_request_past_its_deadline_is_a_504_and_frees_its_slot(served_state):
    config, served = served_state
    service = served.service
    original = service.timeout_s
    service.timeout_s = 0.01
    try:
        with live_server(config, served) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            with pytest.raises(openai.APIStatusError) as late:
                client.chat.completions.create(model=served.model_id, messages=QUESTION, max_tokens=64)
            assert late.value.status_code == 504 and "timed out" in str(late.value)
            service.timeout_s = original
            reply = client.chat.completions.create(model=served.model_id, messages=QUESTION, max_tokens=2)
            assert reply.usage.completion_tokens == 2
    finally:
        service.timeout_s = original


def test_log_probabilities_come_in_openai_shapes(client, model_id):
    reply = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=3)
    tokens = reply.choices[0].logprobs.content
    assert len(tokens) == reply.usage.completion_tokens == 6
    for token in tokens:
        alternatives = [alt.logprob for alt in token.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True) and alternatives[0] <= 0
        # greedy: the chosen token is the likeliest one, with the same log-probability
        assert token.top_logprobs[0].token == token.token and token.top_logprobs[0].logprob == pytest.approx(token.logprob)
        assert token.bytes == list(token.token.encode())
    plain = client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == reply.choices[0].message.content
    legacy = client.completions.create(model=model_id, prompt="1 + 1 =", max_tokens=4, temperature=0, logprobs=2)
    shape = legacy.choices[0].logprobs
    assert len(shape.tokens) == len(shape.token_logprobs) == len(shape.top_logprobs) == len(shape.text_offset) == 4
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(lp)
               for top, lp in zip(shape.top_logprobs, shape.token_logprobs, strict=True))
    for bad in ({"stream": True, "logprobs": True}, {"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=2, **bad)
