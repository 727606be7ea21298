"""Async client of the speech worker, used by the gateway.

Errors the worker reports (bad input, unknown model, too many streams, not ready) raise
`SpeechWorkerError` with the HTTP status; failing to reach the worker, losing the connection, or
a worker that refuses the internal credential (`api_key`, docs/security.md) raises
`SpeechWorkerUnavailable`: none of these is the caller's fault.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from service.audio.decode import F32LE_CONTENT_TYPE, DecodedAudio
from service.internal_auth import REFUSED_STATUS, bearer_headers
from service.speech_worker.protocol import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    EncodeResult,
    SilenceUnits,
)


class SpeechWorkerError(Exception):
    """The worker refused or failed a request; `status` is its HTTP status (4xx/5xx)."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        self.status = status
        self.message = message
        self.param = param
        super().__init__(f"speech worker error {status}: {message}")


class SpeechWorkerUnavailable(Exception):
    """The worker cannot be reached, or the connection broke."""


class SpeechWorkerMalformedAnswer(SpeechWorkerUnavailable):
    """The worker answered with something that is not what its protocol says (the gateway
    gives 502); the message holds what came, for the log only."""


# Close codes of the stream protocol -> the HTTP status the same problem has.
_CLOSE_STATUS = {CLOSE_POLICY: 400, CLOSE_INTERNAL: 500, CLOSE_TRY_AGAIN: 503}
CREDENTIAL_REFUSED = "speech worker refused the internal credential (SPIRITLM_INTERNAL_API_KEY)"


class SpeechClient:
    """HTTP + WebSocket client of one speech worker at `base_url` (e.g. http://host:8200).

    `api_key` is the internal credential the worker checks (empty: none is sent).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str = "",
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self._headers = bearer_headers(api_key)
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout)
        )
        self._owns_http = http is None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> SpeechClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- status

    async def health(self) -> bool:
        """Whether the worker is alive (False when it answers but reports a failure)."""
        response = await self._request("GET", "/health")
        return response.status_code == 200

    async def ready(self) -> bool:
        """Whether the worker has loaded its models."""
        response = await self._request("GET", "/ready")
        return response.status_code == 200

    # ---- models

    async def silence_units(self, model: str) -> frozenset[int]:
        """The model's HuBERT units of silence, as the worker learnt them at load time."""
        response = await self._request("GET", f"/v1/models/{quote(model, safe='')}/silence")
        _raise_for_error(response)
        try:
            # Strict: units must be JSON integers (no floats, strings or booleans).
            result = SilenceUnits.model_validate_json(response.content, strict=True)
        except ValidationError as error:
            raise SpeechWorkerMalformedAnswer(
                f"unexpected silence units from the speech worker: {response.text[:200]!r}"
            ) from error
        if result.model != model:
            raise SpeechWorkerMalformedAnswer(
                f"speech worker sent silence units of '{result.model}', not '{model}'"
            )
        return frozenset(result.silence_units)

    # ---- one-shot

    async def encode(
        self,
        audio: bytes | DecodedAudio,
        model: str | None = None,
        keep_ms: tuple[int, int | None] | None = None,
        *,
        ahead: bool = False,
        realtime: bool = False,
    ) -> EncodeResult:
        """Units and token string of an audio file's bytes (any format the worker decodes), or
        of audio the caller has decoded already, sent as raw samples the worker does not decode
        again (F32LE_CONTENT_TYPE, docs/architecture.md). `keep_ms`: only the units of that
        stretch, in milliseconds from the start (a window of a turn, service/units/windows.py).
        `ahead`: work sent before anyone waits for it, which the worker lets in after work
        someone does wait for (service/speech_worker/priority.py). `realtime`: a realtime
        conversation's turn, encoded in the worker's `realtime_encoder_dtype`."""
        params: dict[str, str | int] = {"model": model} if model else {}
        if keep_ms is not None:
            params["keep_from_ms"] = keep_ms[0]
            if keep_ms[1] is not None:
                params["keep_to_ms"] = keep_ms[1]
        for flag, value in (("ahead", ahead), ("realtime", realtime)):
            if value:
                params[flag] = "true"
        body: bytes | AsyncIterator[memoryview]
        if isinstance(audio, DecodedAudio):
            # Slices of the samples, not a copy of them; with the length given, not chunked.
            body = _async_chunks(audio.f32le_chunks())
            headers = {"Content-Type": F32LE_CONTENT_TYPE, "Content-Length": str(audio.nbytes)}
        else:
            body, headers = audio, {"Content-Type": "application/octet-stream"}
        response = await self._request(
            "POST", "/v1/encode", params=params, content=body, headers=headers
        )
        _raise_for_error(response)
        try:
            return EncodeResult.model_validate_json(response.content)
        except ValidationError as error:
            raise SpeechWorkerMalformedAnswer(
                f"unexpected encode result from the speech worker: {response.text[:200]!r}"
            ) from error

    async def decode(
        self,
        *,
        model: str | None = None,
        tokens: str | None = None,
        units: dict[str, Any] | None = None,
        speaker: int = 2,
        duration_prediction: bool = True,
        format: str = "wav",
        sample_rate: int = 16000,
        seed: int | None = None,
    ) -> bytes:
        """Audio file bytes (`format`) for a token string or a units dict."""
        body: dict[str, Any] = {
            "speaker": speaker,
            "duration_prediction": duration_prediction,
            "format": format,
            "sample_rate": sample_rate,
        }
        for name, value in (("model", model), ("tokens", tokens), ("units", units), ("seed", seed)):
            if value is not None:
                body[name] = value
        response = await self._request("POST", "/v1/decode", json=body)
        _raise_for_error(response)
        return response.content

    # ---- streaming

    def stream(
        self,
        model: str | None = None,
        speaker: int = 2,
        sample_rate: int = 16000,
        *,
        seed: int | None = None,
    ) -> SpeechStream:
        """A synthesis stream; use as ``async with client.stream(...) as stream:``."""
        query: dict[str, Any] = {"speaker": speaker, "sample_rate": sample_rate}
        if model:
            query["model"] = model
        if seed is not None:
            query["seed"] = seed
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = urlunsplit((scheme, parts.netloc, parts.path + "/v1/stream", urlencode(query), ""))
        return SpeechStream(url, open_timeout=self.connect_timeout, headers=self._headers)

    async def _request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method, self.base_url + path, headers={**self._headers, **(headers or {})}, **kwargs
            )
        except httpx.TransportError as error:
            raise SpeechWorkerUnavailable(
                f"speech worker at {self.base_url} unreachable: {error!r}"
            ) from error
        if response.status_code == REFUSED_STATUS:
            raise SpeechWorkerUnavailable(CREDENTIAL_REFUSED)
        return response


class SpeechStream:
    """One synthesis stream. Send tokens, then `end()`; iterate to get pcm16 byte chunks.

    Sending and iterating may run in different tasks. Iteration stops after the worker's `done`
    (then `samples` holds the count it reported) or after a `cancel()`. Leaving the ``async
    with`` block closes the connection, which also stops the worker's work on the stream.
    """

    def __init__(
        self, url: str, *, open_timeout: float = 5.0, headers: dict[str, str] | None = None
    ) -> None:
        self.url = url
        self.open_timeout = open_timeout
        self._headers = headers or {}
        self.samples: int | None = None
        self._connection: ClientConnection | None = None
        self._cancelled = False

    async def __aenter__(self) -> SpeechStream:
        try:
            # Audio frames come from our own worker: no size limit; pcm does not compress.
            self._connection = await connect(
                self.url,
                additional_headers=self._headers,
                open_timeout=self.open_timeout,
                max_size=None,
                compression=None,
            )
        except InvalidStatus as error:
            raise _handshake_error(error) from None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as error:
            raise SpeechWorkerUnavailable(
                f"speech worker stream at {self.url} unreachable: {error!r}"
            ) from error
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def connection(self) -> ClientConnection:
        if self._connection is None:
            raise RuntimeError("SpeechStream is not open: use `async with client.stream(...)`")
        return self._connection

    async def send_tokens(self, tokens: Sequence[str], context: bool = False) -> None:
        """Speech token strings in LM order; `context` ones are vocoded but not returned."""
        await self._send({"type": "tokens", "tokens": list(tokens), "context": context})

    async def end(self) -> None:
        await self._send({"type": "end"})

    async def cancel(self) -> None:
        """Stop the worker's work at once; iteration then ends without `done`."""
        self._cancelled = True
        await self._send({"type": "cancel"})

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self.connection.send(json.dumps(message))
        except ConnectionClosed as error:
            if self._cancelled and message["type"] == "cancel":
                return  # the stream is over either way
            raise _closed_error(error) from None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                frame = await self.connection.recv()
            except ConnectionClosed as error:
                if self._cancelled or (error.rcvd is not None and error.rcvd.code == 1000):
                    return
                raise _closed_error(error) from None
            if isinstance(frame, bytes):
                yield frame
                continue
            try:
                message = json.loads(frame)
                kind = message.get("type")
                if kind == "done":
                    self.samples = int(message["samples"])
                    return
                if kind == "error":
                    status, text = int(message.get("status", 400)), str(message["message"])
            except (ValueError, TypeError, AttributeError, KeyError) as error:
                raise SpeechWorkerMalformedAnswer(
                    f"unexpected message from the speech worker: {frame[:200]!r}"
                ) from error
            if kind == "error":
                raise SpeechWorkerError(status, text)
            raise SpeechWorkerMalformedAnswer(
                f"unexpected message from the speech worker: {frame[:200]!r}"
            )


async def _async_chunks(chunks: Iterator[memoryview]) -> AsyncIterator[memoryview]:
    for chunk in chunks:
        yield chunk


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    message, param = _error_details(response.content, response.status_code)
    raise SpeechWorkerError(response.status_code, message, param=param)


def _handshake_error(error: InvalidStatus) -> SpeechWorkerError | SpeechWorkerUnavailable:
    response = error.response
    if response.status_code == REFUSED_STATUS:
        return SpeechWorkerUnavailable(CREDENTIAL_REFUSED)
    message, param = _error_details(response.body or b"", response.status_code)
    return SpeechWorkerError(response.status_code, message, param=param)


def _error_details(body: bytes, status: int) -> tuple[str, str | None]:
    """Message and param of an OpenAI-shaped error body (or the raw text)."""
    try:
        error = json.loads(body)["error"]
        return str(error["message"]), error.get("param")
    except (ValueError, KeyError, TypeError):
        text = body.decode(errors="replace").strip()
        return text or f"HTTP {status}", None


def _closed_error(error: ConnectionClosed) -> Exception:
    close = error.rcvd
    if close is not None and close.code in _CLOSE_STATUS:
        return SpeechWorkerError(_CLOSE_STATUS[close.code], close.reason or "stream closed")
    return SpeechWorkerUnavailable(f"speech worker stream closed: {error}")


__all__ = [
    "EncodeResult",
    "SpeechClient",
    "SpeechStream",
    "SpeechWorkerError",
    "SpeechWorkerMalformedAnswer",
    "SpeechWorkerUnavailable",
]
