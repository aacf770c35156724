"""`/v1/`: the run's model, steered or not, for any OpenAI client.

`/v1/models` lists the base model; `/v1/chat/completions` and `/v1/completions` generate, streamed as
server-sent events with `stream: true`. Steering comes from the model name (grammar in
`steering_request`) or a `steering` field in the body. Each response carries a `thinklens` field:
the steering applied, and the completion token (and character) it started at.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from thinklens.errors import ThinklensError
from thinklens.server.api import MAX_ID, _check_length, _sse, check_steering
from thinklens.server.generation import Delta, Finished, GenerationJob, TokenLogprob
from thinklens.server.steering_request import Steering, parse_model_name

router = APIRouter(prefix="/v1", tags=["openai"])
MAX_MESSAGES = 64


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str = Field(description="Plain text (content parts are not supported).")


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # clients send fields we do not use

    model: str = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=MAX_ID)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="One choice per request.")
    steering: Steering | None = Field(default=None, description="Steering as JSON (wins over the model name's).")


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    logprobs: bool = Field(default=False, description="Return each token's log-probability (not when streaming).")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="With logprobs: the k likeliest "
                                                                            "tokens at each step.")

    def wanted_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise ThinklensError("top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Common):
    prompt: str = Field(min_length=1, description="Raw text: the model continues it (no chat template).")
    logprobs: int | None = Field(default=None, ge=0, le=5, description="Return log-probabilities with the k "
                                                                       "likeliest tokens at each step.")

    def wanted_logprobs(self) -> int | None:
        return self.logprobs


@router.get("/models", summary="The served model")
def models(request: Request) -> dict[str, Any]:
    state = request.app.state.served
    return {"object": "list", "data": [{"id": state.model_id, "object": "model", "created": 0,
                                        "owned_by": "thinklens", "run": state.model_run,
                                        "steerable": f"{state.model_id}+f<ID>@<STRENGTH>[:<POLICY>]" if state.model_run else None}]}


@router.post("/chat/completions", summary="Chat completion (steered by model name or `steering`)")
def chat_completions(request: Request, body: ChatRequest):
    sent = "".join(message.content for message in body.messages)
    job = _job(request, body, sent, messages=tuple({"role": "system" if m.role == "developer" else m.role,
                                                    "content": m.content} for m in body.messages))
    return _respond(request, body, job, chat=True)


@router.post("/completions", summary="Text completion of a raw prompt (steered by model name or `steering`)")
def completions(request: Request, body: CompletionRequest):
    job = _job(request, body, body.prompt, text=body.prompt)  # the raw text is the model's input
    return _respond(request, body, job, chat=False)


def _job(request: Request, body: _Common, sent: str, **what: Any) -> GenerationJob:
    state = request.app.state.served
    state.need_model()
    steering = body.steering or parse_model_name(body.model, state.model_id)
    max_tokens = body.max_completion_tokens or body.max_tokens or min(256, state.config.max_tokens)
    check_steering(state, state.run(state.model_run) if state.model_run else None, steering, max_tokens)
    _check_length(state, sent, "the prompt")
    top = body.wanted_logprobs()
    if top is not None and body.stream:
        raise ThinklensError("log-probabilities come with non-streamed requests: drop stream or logprobs")
    return GenerationJob(steering=steering, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                         seed=body.seed or 0, top_logprobs=top, **what)


def _respond(request: Request, body: _Common, job: GenerationJob, chat: bool):
    service = request.app.state.served.need_model()
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    steering = job.steering.model_dump(mode="json")
    if not body.stream:
        result = service.complete(job)
        _raise_failed(result)
        choice = ({"index": 0, "message": {"role": "assistant", "content": result.text},
                   "finish_reason": result.finish_reason, "logprobs": _chat_logprobs(result.logprobs)} if chat else
                  {"index": 0, "text": result.text, "finish_reason": result.finish_reason,
                   "logprobs": _completion_logprobs(result.logprobs)})
        return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": body.model, "choices": [choice], "usage": _usage(result),
                "thinklens": _extra(steering, result)}
    events = service.start(job)  # Busy (503) before the stream opens

    def chunks() -> Iterator[str]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        if chat:
            yield _sse({"id": ident, "object": kind, "created": created, "model": body.model,
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        for event in events:
            if isinstance(event, Delta):
                part = {"delta": {"content": event.text}} if chat else {"text": event.text}
                yield _sse({"id": ident, "object": kind, "created": created, "model": body.model,
                            "choices": [{"index": 0, **part, "finish_reason": None}]})
            elif isinstance(event, Finished):
                if event.error:
                    yield _sse({"error": {"message": event.error, "type": event.finish_reason}})
                    break
                part = {"delta": {}} if chat else {"text": ""}
                yield _sse({"id": ident, "object": kind, "created": created, "model": body.model,
                            "choices": [{"index": 0, **part, "finish_reason": event.finish_reason}],
                            "usage": _usage(event), "thinklens": _extra(steering, event)})
        yield "data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


def _raise_failed(result: Finished) -> None:
    if result.error and result.error.startswith("internal error"):
        raise RuntimeError(result.error)  # a bug: the 500 handler says so
    if result.error:
        if result.finish_reason == "timeout":
            import concurrent.futures

            raise concurrent.futures.TimeoutError(result.error)
        raise ThinklensError(result.error)


def _chat_logprobs(tokens: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """OpenAI's chat shape: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`."""
    if tokens is None:
        return None
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}
    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(a, v) for a, v in t.top]}
                        for t in tokens], "refusal": None}


def _completion_logprobs(tokens: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """The legacy completions shape: parallel lists, `top_logprobs` as {token: logprob} per step."""
    if tokens is None:
        return None
    offsets = [0]
    for t in tokens[:-1]:
        offsets.append(offsets[-1] + len(t.token))
    return {"tokens": [t.token for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [_first_of_each(t.top) for t in tokens], "text_offset": offsets}


def _first_of_each(top: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """{text: logprob}, the likeliest where two tokens decode to the same text (a dict keeps one)."""
    out: dict[str, float] = {}
    for token, logprob in top:
        out.setdefault(token, logprob)
    return out


def _usage(result: Finished) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _extra(steering: dict[str, Any], result: Finished) -> dict[str, Any]:
    return {"steering": steering, "steered_from_token": result.steered_from_token,
            "steered_from_char": result.steered_from_char}
