"""The chat client `explain` talks through: the official `openai` package, any compatible endpoint.

Retries with exponential backoff on 429 and 5xx (and dropped connections), a timeout per request,
and a count of the tokens spent. A bad URL, key or model is one `ThinklensError` naming the fix.
Network goes only to the base URL given.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from thinklens.errors import ThinklensError


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, prompt: int, completion: int) -> None:
        with self.lock:
            self.requests += 1
            self.prompt_tokens += prompt
            self.completion_tokens += completion


class ChatClient:
    """`ask(prompt) -> reply text` and `ask_yes_no(prompt) -> P(yes)` against `base_url` with `model`."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", timeout_s: float = 60,
                 max_retries: int = 4, temperature: float = 0.0, max_tokens: int = 256) -> None:
        import openai

        key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "none", timeout=timeout_s, max_retries=0)
        self.base_url, self.model = base_url, model
        self.max_retries, self.temperature, self.max_tokens = max_retries, temperature, max_tokens
        self.usage = Usage()

    def ask(self, prompt: str) -> str:
        """The model's reply to one user message."""
        return self._create(prompt, max_tokens=self.max_tokens).choices[0].message.content or ""

    def ask_yes_no(self, prompt: str) -> float:
        """The probability that the answer to a yes/no question is yes: from the first token's top
        log-probabilities where the endpoint gives them, else 1 or 0 from the word answered."""
        from thinklens.features.autointerp.replies import yes_probability

        choice = self._create(prompt, max_tokens=2, logprobs=True, top_logprobs=10).choices[0]
        content = choice.logprobs.content if choice.logprobs is not None else None
        top = [(alt.token, alt.logprob) for alt in content[0].top_logprobs] if content else None
        return yes_probability(choice.message.content or "", top)

    def _create(self, prompt: str, **options):
        openai = self.openai
        for attempt in range(self.max_retries + 1):
            try:
                reply = self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": prompt}],
                    temperature=self.temperature, **options)
            except openai.AuthenticationError:
                raise ThinklensError(f"{self.base_url} refused the API key: put the key in the variable named by "
                                     "--api-key-env") from None
            except openai.NotFoundError as exc:
                raise ThinklensError(f"{self.base_url} has no model {self.model!r} ({_message(exc)}): pass one "
                                     "its /models lists") from None
            except openai.BadRequestError as exc:
                raise ThinklensError(f"{self.base_url} rejected the request: {_message(exc)}") from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                if attempt == self.max_retries:
                    if isinstance(exc, openai.APIConnectionError):
                        raise ThinklensError(f"cannot reach {self.base_url} ({type(exc).__name__}): check --base-url "
                                             "and that the server runs") from None
                    raise ThinklensError(f"{self.base_url} kept failing ({_message(exc)}) after "
                                         f"{self.max_retries} retries: try again later") from None
                with self.usage.lock:
                    self.usage.retries += 1
                time.sleep(min(30.0, 0.5 * 2**attempt))
                continue
            usage = reply.usage
            self.usage.add(usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
            return reply
        raise AssertionError("unreachable")


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:200]
    return str(exc).splitlines()[0][:200]
