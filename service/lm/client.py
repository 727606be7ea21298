"""Client of the LM worker: vLLM's OpenAI /v1/completions with token-id prompts, streamed.

Closing the stream early (breaking out of `stream()` or cancelling its task) closes the HTTP
connection, which makes vLLM abort the request and free its KV cache. With `api_key` (the internal
credential, docs/security.md) every call carries it as a Bearer token, which vLLM's `--api-key`
checks; a worker that refuses it fails like an unreachable one (503), not like a bad request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from service.internal_auth import REFUSED_STATUS, bearer_headers


class LMError(Exception):
    """The LM worker refused a request (status < 500) or is unavailable (status >= 500)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class LMRequestFailed(LMError):
    """vLLM took the request, then reported in its stream that it failed (status >= 500).

    The worker answered, so it is up: what failed is this request (an input vLLM could not
    handle, e.g. a sampling value its serializer overflows), and it must not take the worker out
    of the pool for everyone. A worker that is really down fails its health checks.
    """


class LMMalformedAnswer(LMError):
    """The LM worker answered with something that is not a vLLM completion (502)."""

    def __init__(self, message: str) -> None:
        super().__init__(502, message)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 200
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    # Each generated token's log-probability (vLLM's `logprobs`, the raw model output before
    # the output-modality mask and sampling parameters), in `Delta.logprobs`.
    logprobs: bool = False

    def to_request(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.stop_token_ids:
            body["stop_token_ids"] = list(self.stop_token_ids)
        if self.logprobs:
            # 0 = the sampled token's only; the worker has no tokenizer (--skip-tokenizer-init),
            # so it must name tokens by id rather than decode them.
            body["logprobs"] = 0
            body["return_tokens_as_token_ids"] = True
        return body


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Delta:
    """Newly generated token ids; the last delta carries the finish reason."""

    token_ids: list[int]
    finish_reason: str | None = None
    usage: Usage | None = None
    logprobs: list[float] | None = None  # one per token id, when SamplingParams.logprobs


class LMClient:
    """Talks to one vLLM server. `model` is the served model name; `api_key` the credential its
    `--api-key` wants (empty: none is sent)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "",
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._headers = bearer_headers(api_key)
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0))
        self._owns_http = http is None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _body(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        allowed_token_ids: Sequence[int] | None,
    ) -> dict[str, Any]:
        body = {
            "model": self.model,
            "prompt": list(prompt_ids),
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
            **params.to_request(),
        }
        if allowed_token_ids is not None:
            body["allowed_token_ids"] = list(allowed_token_ids)
        return body

    async def stream(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        allowed_token_ids: Sequence[int] | None = None,
    ) -> AsyncIterator[Delta]:
        """Yield token-id deltas as vLLM produces them; the last one carries the usage."""
        body = self._body(prompt_ids, params, allowed_token_ids)
        url = f"{self.base_url}/v1/completions"
        try:
            async with self._http.stream("POST", url, json=body, headers=self._headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _response_error(response)
                done = False
                async for line in response.aiter_lines():
                    done = done or line == "data: [DONE]"
                    try:
                        delta = self._parse_event(line)
                    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
                        raise LMMalformedAnswer(f"not a completion event: {line[:200]!r}") from None
                    if delta is not None and not all(type(t) is int for t in delta.token_ids):
                        raise LMMalformedAnswer(f"token ids that are not integers: {line[:200]!r}")
                    if delta is not None:
                        yield delta
                if not done:
                    # Not vLLM's event stream (plain JSON, or an end without its marker).
                    raise LMMalformedAnswer("the completion stream ended without [DONE]")
        except httpx.HTTPError as error:
            raise LMError(503, f"LM worker at {self.base_url} is unavailable: {error}") from error

    @staticmethod
    def _parse_event(line: str) -> Delta | None:
        if not line.startswith("data: ") or line == "data: [DONE]":
            return None
        event = json.loads(line[len("data: ") :])
        error = event.get("error")
        if error is not None:
            # vLLM reports a failure after the 200 header as an error event, then [DONE].
            raise _stream_error(error)
        choices = event.get("choices") or []
        if not choices:
            usage = event.get("usage")
            if not usage:
                return None
            return Delta(
                [], None, Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            )
        choice = choices[0]
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
        return Delta(
            list(choice.get("token_ids") or []),
            choice.get("finish_reason"),
            logprobs=None if logprobs is None else [float(value) for value in logprobs],
        )

    async def prompt_logprobs(self, prompt_ids: Sequence[int]) -> list[float | None]:
        """The log-probability of each prompt token given the ones before it (None for the
        first), over the whole vocabulary, as the model's raw logits give it."""
        body = {
            "model": self.model,
            "prompt": list(prompt_ids),
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
        }
        try:
            response = await self._http.post(
                f"{self.base_url}/v1/completions", json=body, headers=self._headers
            )
        except httpx.HTTPError as error:
            raise LMError(503, f"LM worker at {self.base_url} is unavailable: {error}") from error
        if response.status_code != 200:
            raise _response_error(response)
        entries = response.json()["choices"][0]["prompt_logprobs"]
        return [
            None if entry is None else float(entry[str(token_id)]["logprob"])
            for token_id, entry in zip(prompt_ids, entries, strict=True)
        ]


def _stream_error(error: Any) -> LMError:
    if not isinstance(error, dict):
        return LMRequestFailed(500, f"LM worker error: {error}")
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    message = f"LM worker error: {error.get('message', error)}"
    return LMError(status, message) if status < 500 else LMRequestFailed(status, message)


def _response_error(response: httpx.Response) -> LMError:
    if response.status_code == REFUSED_STATUS:
        return LMError(503, "LM worker refused the internal credential (SPIRITLM_INTERNAL_API_KEY)")
    return LMError(response.status_code, _error_message(response))


def _error_message(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:500] or f"HTTP {response.status_code}"
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)
