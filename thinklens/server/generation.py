"""The served model: one `Variant`, one worker thread, a bounded queue, streamed tokens.

Requests never touch the model directly. `GenerationService.start` takes a slot (running or waiting;
when all `capacity` slots are taken the request is refused at once with `Busy`, a 503) and queues
the job for the single worker thread, which owns the model and its steering hook. The job streams
`Delta` events (text as it is decoded, never half a UTF-8 character) and ends with one `Finished`;
a reader that goes away, or a job past its deadline, stops the generation at the next token.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from thinklens.errors import ThinklensError
from thinklens.models.formats import render_messages
from thinklens.models.generate import Sampling
from thinklens.server.steering_request import Steering
from thinklens.steering.variant import Variant, typical_max_activations


class Busy(ThinklensError):
    """Every slot of the queue is taken (the API answers 503)."""


class Stopped(Exception):
    """Raised inside the generation loop to end a job early (reader gone, or past its deadline)."""


@dataclass(frozen=True)
class GenerationJob:
    """One generation: the model's exact input (`text`), or a conversation to render with the chat template."""

    steering: Steering
    messages: tuple[dict[str, str], ...] = ()
    text: str | None = None
    max_tokens: int = 128
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    top_logprobs: int | None = None  # None: no log-probabilities; k: each token's, with the k likeliest


@dataclass
class Delta:
    text: str


@dataclass(frozen=True)
class TokenLogprob:
    """One completion token as text, its log-probability, and the likeliest alternatives at its step."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class Finished:
    """The end of a job: the whole completion, why it stopped, and where steering started."""

    text: str
    finish_reason: str  # "stop", "length", "timeout", or "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steered_from_token: int | None = None  # index in the completion of the first steered token
    steered_from_char: int | None = None
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None  # when the job asked for them


@dataclass
class _Stream:
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


class GenerationService:
    """The model behind the playground and the OpenAI endpoint."""

    def __init__(self, variant: Variant, db_connection, contrast_dir, capacity: int = 4, timeout_s: float = 120.0,
                 model_id: str = "model") -> None:
        self.variant, self.model_id = variant, model_id
        self.capacity, self.timeout_s = capacity, timeout_s
        self._db = db_connection  # a callable giving a read-only connection (typical maxima)
        self._contrast_dir = contrast_dir  # name → RunDir's directory of that contrast
        self._slots = threading.BoundedSemaphore(capacity)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinklens-generate")

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def start(self, job: GenerationJob) -> Iterator[Delta | Finished]:
        """Queue `job`; the events it streams. Raises `Busy` when every slot is taken."""
        if not self._slots.acquire(blocking=False):
            raise Busy(f"the model is busy ({self.capacity} requests running or waiting): retry in a moment")
        stream = _Stream()
        deadline = time.monotonic() + self.timeout_s
        try:
            self._worker.submit(self._run, job, stream, deadline)
        except RuntimeError:
            self._slots.release()
            raise Busy("the server is shutting down") from None
        return self._events(stream, deadline)

    def run_exclusive(self, work, timeout_s: float | None = None):
        """`work(variant)` on the worker thread (the model's only user), within a slot; its result."""
        if not self._slots.acquire(blocking=False):
            raise Busy(f"the model is busy ({self.capacity} requests running or waiting): retry in a moment")

        def job():
            try:
                return work(self.variant)
            finally:
                self._slots.release()

        try:
            future = self._worker.submit(job)
        except RuntimeError:
            self._slots.release()
            raise Busy("the server is shutting down") from None
        return future.result(timeout=timeout_s or self.timeout_s)

    def complete(self, job: GenerationJob) -> Finished:
        """Run `job` to its end (the non-streaming endpoints)."""
        for event in self.start(job):
            if isinstance(event, Finished):
                return event
        raise RuntimeError("generation ended without a result")  # _events always ends with Finished

    def _events(self, stream: _Stream, deadline: float) -> Iterator[Delta | Finished]:
        try:
            while True:
                try:
                    event = stream.events.get(timeout=max(0.1, deadline - time.monotonic() + 5))
                except queue.Empty:
                    stream.cancelled.set()
                    yield Finished("", "timeout", error="the request timed out waiting for the model")
                    return
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            stream.cancelled.set()  # the reader went away (or finished): stop at the next token

    # ------------------------------------------------------------------ on the worker thread
    def _run(self, job: GenerationJob, stream: _Stream, deadline: float) -> None:
        try:
            if stream.cancelled.is_set():
                return
            stream.events.put(self._generate(job, stream, deadline))
        except Stopped:
            stream.events.put(Finished("", "timeout", error="the request timed out"))
        except ThinklensError as exc:
            stream.events.put(Finished("", "error", error=str(exc)))
        except Exception as exc:  # never a traceback to the client; the server keeps serving
            stream.events.put(Finished("", "error", error=f"internal error: {type(exc).__name__}"))
        finally:
            self._slots.release()

    def _generate(self, job: GenerationJob, stream: _Stream, deadline: float) -> Finished:
        variant, tokenizer = self.variant, self.variant.loaded.tokenizer
        self._steer(job.steering)
        text = job.text if job.text is not None else render_messages(tokenizer, variant.fmt, list(job.messages))
        produced: list[int] = []
        shown = [""]

        def on_step(_rows: list[int], tokens: list[int]) -> None:
            if stream.cancelled.is_set() or time.monotonic() > deadline:
                raise Stopped
            produced.append(tokens[0])
            decoded = tokenizer.decode(produced, skip_special_tokens=True)
            if not decoded.endswith("\ufffd") and len(decoded) > len(shown[0]) and decoded.startswith(shown[0]):
                stream.events.put(Delta(decoded[len(shown[0]):]))
                shown[0] = decoded

        greedy = job.temperature == 0
        sampling = Sampling(greedy=greedy, temperature=job.temperature or 1.0, top_p=job.top_p)
        try:
            (output,) = variant.generate([text], job.max_tokens, sampling, seed=job.seed, on_step=on_step,
                                         rendered=True, top_logprobs=job.top_logprobs or 0)
        finally:
            variant.reset()
        completion_ids = output.token_ids[output.generation_start:]
        final = tokenizer.decode(completion_ids, skip_special_tokens=True)
        if final.startswith(shown[0]) and len(final) > len(shown[0]):
            stream.events.put(Delta(final[len(shown[0]):]))
        start = None if math.isinf(output.start) else int(output.start) - output.generation_start
        start_char = len(tokenizer.decode(completion_ids[:start], skip_special_tokens=True)) if start is not None else None
        return Finished(final, "stop" if output.finish_reason == "eos" else "length", output.generation_start,
                        len(completion_ids), start, start_char,
                        logprobs=None if job.top_logprobs is None else _logprobs(tokenizer, output))

    def _steer(self, steering: Steering) -> None:
        variant = self.variant
        variant.reset()
        variant.absolute = False
        if steering.empty:
            return
        missing = [edit.feature for edit in steering.features if edit.feature not in variant.typical_max]
        if missing:
            variant.typical_max.update(typical_max_activations(_Connection(self._db()), missing))
        for edit in steering.features:
            variant.set(edit.feature, edit.strength, policy=steering.policy, mode=edit.mode)
        if steering.contrast is not None:
            from thinklens.features.contrast import load_direction

            path = Path(self._contrast_dir(steering.contrast.name)) / "direction.safetensors"
            if not path.is_file():
                raise ThinklensError(f"contrast {steering.contrast.name!r} has no direction in this run")
            variant.add_direction(load_direction(path), steering.contrast.strength, policy=steering.policy)
        variant.policy = steering.policy


class _Connection:
    """What `typical_max_activations` reads (`.connection`), over the server's read-only connection."""

    def __init__(self, connection) -> None:
        self.connection = connection


def _logprobs(tokenizer, output) -> list[TokenLogprob]:
    """Each visible completion token (special tokens such as the end of turn are left out, as in the text)."""
    special = set(tokenizer.all_special_ids)
    completion = output.token_ids[output.generation_start:]
    tops = output.top_logprobs or [[] for _ in completion]
    return [TokenLogprob(tokenizer.decode([token]), logprob,
                         tuple((tokenizer.decode([alt]), value) for alt, value in top))
            for token, logprob, top in zip(completion, output.logprobs, tops, strict=True) if token not in special]
