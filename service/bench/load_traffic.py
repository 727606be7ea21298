"""The requests of the load test: one coroutine per kind of traffic, each judging its own outcome.

Every kind returns a `Result`: whether the request succeeded by the API's own rules (HTTP 200
and, for streams, a final event and no ``error`` event) and, for speech outputs, when the first
audio arrived. The load runner times the whole request around it.

Kinds (the gateway routes they use):

* ``generate-text``: POST /v1/generate, text output, not streamed;
* ``generate-speech``: POST /v1/generate, speech output, streamed as SSE (first audio = first
  ``audio.delta``);
* ``transcription``: POST /v1/audio/transcriptions, multipart upload of a speech file;
* ``speech``: POST /v1/audio/speech with ``stream_format=sse`` (errors arrive as events);
* ``tokenize``: POST /v1/speech/tokenize, raw audio body;
* ``realtime``: WS /v1/realtime, one text turn answered in speech, then close.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import connect

SENTENCES = (
    "The train leaves at seven from the central station.",
    "Every morning she opens the window and makes tea.",
    "The children are playing in the park near the river.",
    "What would you like to do next?",
)


@dataclass(frozen=True)
class Result:
    ok: bool
    first_audio: float | None = None  # seconds from the request's start
    error: str | None = None


@dataclass
class Traffic:
    """What every request needs: where the gateway is, the audio to send, sizes of the work."""

    base_url: str
    http: httpx.AsyncClient
    speech_audio: bytes  # an audio file (flac/wav bytes)
    headers: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    text_tokens: int = 16
    speech_tokens: int = 50
    timeout: float = 120.0
    counter: int = 0

    def sentence(self) -> str:
        self.counter += 1
        return f"{SENTENCES[self.counter % len(SENTENCES)]} ({self.counter})"

    def ws_url(self, path: str) -> str:
        return self.base_url.replace("https://", "wss://").replace("http://", "ws://") + path


Kind = Callable[[Traffic], Awaitable[Result]]


def _http_error(response: httpx.Response) -> Result:
    # Streamed responses are read (`aread`) before they get here, so `text` is available.
    return Result(False, error=f"HTTP {response.status_code}: {response.text[:300]}")


def _model(traffic: Traffic) -> dict[str, str]:
    return {"model": traffic.model} if traffic.model else {}


async def generate_text(traffic: Traffic) -> Result:
    body = {
        **_model(traffic),
        "inputs": [{"type": "text", "text": traffic.sentence()}],
        "output_modality": "text",
        "max_tokens": traffic.text_tokens,
        "temperature": 0.8,
    }
    response = await traffic.http.post(
        f"{traffic.base_url}/v1/generate", json=body, headers=traffic.headers
    )
    if response.status_code != 200:
        return _http_error(response)
    payload = response.json()
    if not payload.get("output_token_ids"):
        return Result(False, error="no output tokens")
    return Result(True)


async def _sse(
    traffic: Traffic,
    path: str,
    request: dict[str, Any],
    audio_type: str,
    done_type: str,
) -> Result:
    """POST a streamed request and read its SSE events to the end."""
    started = time.perf_counter()
    first: float | None = None
    finished = False
    async with traffic.http.stream(
        "POST", f"{traffic.base_url}{path}", headers=traffic.headers, **request
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return _http_error(response)
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            kind = event.get("type")
            if kind == "error":
                return Result(False, first, f"error event: {json.dumps(event)[:300]}")
            if kind == audio_type and first is None:
                first = time.perf_counter() - started
            if kind == done_type:
                finished = True
    if not finished:
        return Result(False, first, f"stream ended without '{done_type}'")
    return Result(True, first)


async def generate_speech(traffic: Traffic) -> Result:
    body = {
        **_model(traffic),
        "inputs": [{"type": "text", "text": traffic.sentence()}],
        "output_modality": "speech",
        "max_tokens": traffic.speech_tokens,
        "temperature": 0.8,
        "stream": True,
    }
    return await _sse(traffic, "/v1/generate", {"json": body}, "audio.delta", "done")


async def speech(traffic: Traffic) -> Result:
    body = {
        **_model(traffic),
        "input": traffic.sentence(),
        "response_format": "wav",
        "stream_format": "sse",
        "max_tokens": traffic.speech_tokens,
    }
    return await _sse(
        traffic, "/v1/audio/speech", {"json": body}, "speech.audio.delta", "speech.audio.done"
    )


async def transcription(traffic: Traffic) -> Result:
    files = {"file": ("speech.flac", traffic.speech_audio, "audio/flac")}
    data = {"max_tokens": str(traffic.text_tokens), **_model(traffic)}
    response = await traffic.http.post(
        f"{traffic.base_url}/v1/audio/transcriptions",
        files=files,
        data=data,
        headers=traffic.headers,
    )
    if response.status_code != 200:
        return _http_error(response)
    if "text" not in response.json():
        return Result(False, error="no 'text' in the transcription")
    return Result(True)


async def tokenize(traffic: Traffic) -> Result:
    response = await traffic.http.post(
        f"{traffic.base_url}/v1/speech/tokenize",
        content=traffic.speech_audio,
        params=_model(traffic),
        headers={**traffic.headers, "Content-Type": "application/octet-stream"},
    )
    if response.status_code != 200:
        return _http_error(response)
    if "[Hu" not in response.json().get("tokens", ""):
        return Result(False, error="no speech tokens in the tokenize response")
    return Result(True)


async def realtime(traffic: Traffic) -> Result:
    """One session: a text turn, a spoken reply to the end, then a normal close."""
    query = f"?model={traffic.model}" if traffic.model else ""
    headers = traffic.headers or None
    async with connect(
        traffic.ws_url("/v1/realtime" + query),
        additional_headers=headers,
        max_size=None,
        open_timeout=traffic.timeout,
    ) as ws:

        async def next_event() -> dict[str, Any]:
            return json.loads(await ws.recv())

        async def send(**event: Any) -> None:
            await ws.send(json.dumps(event))

        first = await next_event()
        if first.get("type") != "session.created":
            return Result(False, error=f"first event {json.dumps(first)[:300]}")
        await send(
            type="session.update",
            session={
                "output_modalities": ["audio"],
                "max_output_tokens": traffic.speech_tokens,
                "audio": {"input": {"turn_detection": None}},
            },
        )
        await _until_updated(next_event)
        await send(
            type="conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": traffic.sentence()}],
            },
        )
        started = time.perf_counter()
        await send(type="response.create")
        audio_at: float | None = None
        while True:
            event = await next_event()
            kind = event.get("type")
            if kind == "error":
                return Result(False, audio_at, f"error event: {json.dumps(event)[:300]}")
            if kind in ("response.output_audio.delta", "response.audio.delta") and audio_at is None:
                audio_at = time.perf_counter() - started
            if kind == "response.done":
                status = event["response"].get("status")
                if status not in ("completed", "incomplete"):
                    return Result(False, audio_at, f"response.done status {status}")
                return Result(True, audio_at)


# A session starts with server VAD on; a gateway without the VAD model says so in an error event
# right after session.created. The load test turns VAD off (manual turns), so that one is no
# failure of the session.
TOLERATED_AT_START = {"server_vad_unavailable"}


async def _until_updated(next_event: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    while True:
        event = await next_event()
        kind = event.get("type")
        if kind == "session.updated":
            return
        if kind == "error" and event.get("error", {}).get("code") not in TOLERATED_AT_START:
            raise RealtimeFailure(f"error event: {json.dumps(event)[:300]}")


class RealtimeFailure(Exception):
    """The realtime session reported an error before the turn."""


KINDS: dict[str, Kind] = {
    "generate-text": generate_text,
    "generate-speech": generate_speech,
    "transcription": transcription,
    "speech": speech,
    "tokenize": tokenize,
    "realtime": realtime,
}
# The gateway path each kind needs (None: a WebSocket route, probed by connecting).
KIND_PATHS: dict[str, str | None] = {
    "generate-text": "/v1/generate",
    "generate-speech": "/v1/generate",
    "transcription": "/v1/audio/transcriptions",
    "speech": "/v1/audio/speech",
    "tokenize": "/v1/speech/tokenize",
    "realtime": None,
}


async def run_one(kind: str, traffic: Traffic) -> Result:
    """One request of `kind`; any failure (including a timeout) is a failed Result."""
    try:
        return await asyncio.wait_for(KINDS[kind](traffic), traffic.timeout)
    except TimeoutError:
        return Result(False, error=f"no answer within {traffic.timeout:.0f} s")
    except (httpx.HTTPError, OSError) as error:
        return Result(False, error=f"{type(error).__name__}: {error}"[:300])
    except Exception as error:  # a broken response (bad JSON, closed socket): the run goes on
        return Result(False, error=f"{type(error).__name__}: {error}"[:300])


async def available_kinds(traffic: Traffic, wanted: list[str]) -> tuple[list[str], list[str]]:
    """The kinds this gateway serves, and a note for each one it does not."""
    response = await traffic.http.get(f"{traffic.base_url}/openapi.json", headers=traffic.headers)
    paths = set(response.json().get("paths", {})) if response.status_code == 200 else set()
    kept, notes = [], []
    for kind in wanted:
        path = KIND_PATHS[kind]
        if path is None:
            if await _websocket_route(traffic, "/v1/realtime"):
                kept.append(kind)
            else:
                notes.append(f"{kind}: skipped, WS /v1/realtime does not answer on this gateway")
        elif path in paths:
            kept.append(kind)
        else:
            notes.append(f"{kind}: skipped, {path} is not in the gateway's OpenAPI schema")
    return kept, notes


async def _websocket_route(traffic: Traffic, path: str) -> bool:
    try:
        async with connect(
            traffic.ws_url(path), additional_headers=traffic.headers or None, open_timeout=30
        ) as ws:
            await asyncio.wait_for(ws.recv(), 30)
            return True
    except Exception:
        return False
