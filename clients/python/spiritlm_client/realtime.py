"""Realtime voice conversations: a client of WS /v1/realtime (OpenAI Realtime protocol).

    async with await RealtimeSession.connect(base_url, model="spirit-lm-base-7b") as session:
        await session.update(audio={"input": {"turn_detection": None}}, max_output_tokens=200)
        await session.append(pcm16)            # raw 16-bit mono at the session's input rate
        await session.commit()
        reply = await session.respond()        # Reply: audio (pcm16), transcript, status, ...

`converse(path, ...)` does a whole turn from a WAV file, streamed in real time (or faster).
Events come back with GA names whatever the server's dialect (``response.audio.delta`` is
read as ``response.output_audio.delta``). Errors the server reports for a request raise
`SpiritLMError` (status 400 for the client's mistakes, 500 otherwise, `code` from the event).
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from spiritlm_client.calls import auth_headers, base_url_from
from spiritlm_client.errors import SpiritLMConnectionError, SpiritLMError

OUTPUT_RATE = 24000
CHUNK_SECONDS = 0.1
# Beta server event names -> GA names: the server's table (service/gateway/realtime/protocol.py,
# BETA_EVENT_NAMES) reversed; this package is installed without the service, so it keeps a copy.
_GA_NAMES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}


@dataclass
class Reply:
    """One response: its audio (pcm16 mono at `sample_rate`), transcript and text."""

    response_id: str
    status: str
    sample_rate: int
    audio: bytes = b""
    transcript: str = ""
    text: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    status_details: dict[str, Any] | None = None
    first_audio_seconds: float | None = None  # from the request (or commit) to the first delta

    @property
    def seconds(self) -> float:
        return len(self.audio) / 2 / self.sample_rate


def realtime_url(base_url: str, model: str | None) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = f"model={quote(model)}" if model else ""
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/v1/realtime", query, ""))


class RealtimeSession:
    """One realtime session; use `await RealtimeSession.connect(...)`, then `async with`."""

    def __init__(self, ws: ClientConnection, session: dict[str, Any]) -> None:
        self.ws = ws
        self.session = session
        self.sample_rate = _output_rate(session)

    @classmethod
    async def connect(
        cls,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        model: str | None = None,
        open_timeout: float = 30.0,
    ) -> RealtimeSession:
        url = realtime_url(base_url_from(base_url), model)
        try:
            ws = await connect(
                url,
                additional_headers=auth_headers(api_key) or None,
                max_size=None,
                open_timeout=open_timeout,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            raise SpiritLMError(status, f"the gateway refused the WebSocket ({status})") from None
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise SpiritLMConnectionError(f"{url}: {error!r}") from error
        first = await _receive(ws)
        if first.get("type") == "error":
            await ws.close()
            raise _error(first)
        return cls(ws, first.get("session", {}))

    async def __aenter__(self) -> RealtimeSession:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.ws.close()

    # ---- sending

    async def send(self, event: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps(event))
        except ConnectionClosed as error:
            raise _closed(error) from None

    async def update(self, **session: Any) -> dict[str, Any]:
        """session.update; returns the effective session (raises on an error event)."""
        await self.send({"type": "session.update", "session": session})
        event = await self.wait_for("session.updated")
        self.session = event["session"]
        self.sample_rate = _output_rate(self.session)
        return self.session

    async def append(self, pcm16: bytes) -> None:
        await self.send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm16).decode()}
        )

    async def commit(self) -> dict[str, Any]:
        await self.send({"type": "input_audio_buffer.commit"})
        return await self.wait_for("input_audio_buffer.committed")

    async def clear(self) -> None:
        await self.send({"type": "input_audio_buffer.clear"})

    async def add_text(self, text: str, role: str = "user") -> None:
        content_type = "output_text" if role == "assistant" else "input_text"
        item = {"type": "message", "role": role, "content": [{"type": content_type, "text": text}]}
        await self.send({"type": "conversation.item.create", "item": item})

    async def create_response(self, **response: Any) -> None:
        await self.send({"type": "response.create", "response": response})

    async def cancel_response(self) -> None:
        await self.send({"type": "response.cancel"})

    # ---- receiving

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events in order, with GA names."""
        while True:
            yield await _receive(self.ws)

    async def wait_for(self, name: str) -> dict[str, Any]:
        """Read until the event `name`; an error event raises `SpiritLMError`."""
        async for event in self.events():
            if event["type"] == "error":
                raise _error(event)
            if event["type"] == name:
                return event
        raise SpiritLMConnectionError("the session ended")  # pragma: no cover

    async def respond(
        self,
        *,
        started: float | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        **response: Any,
    ) -> Reply:
        """Ask for a response (response.create) and collect it until response.done."""
        await self.create_response(**response)
        return await self.collect(started=started, on_event=on_event)

    async def collect(
        self,
        *,
        started: float | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> Reply:
        """Collect the next response (one the server starts by itself, e.g. after its VAD)."""
        replies = _Replies(self.sample_rate, started)
        async for event in self.events():
            if on_event is not None:
                on_event(event)
            done = replies.feed(event)
            if done is not None:
                return done
        raise SpiritLMConnectionError("the session ended before the response")  # pragma: no cover

    async def collect_last_turn(
        self, *, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> Reply:
        """With server VAD, after all audio was appended: the reply to the last detected turn.

        A pause inside the audio can end a turn early; the replies to such turns are cancelled
        when the speech goes on (barge-in). An empty session.update marks where the server has
        handled all the audio, so the last turn is known.
        """
        await self.send({"type": "session.update", "session": {}})
        replies = _Replies(self.sample_rate, None)
        all_heard = False
        final: str | None = None  # the response started after the last end of speech
        async for event in self.events():
            if on_event is not None:
                on_event(event)
            kind = event["type"]
            if kind == "session.updated":
                all_heard = True
            elif kind == "input_audio_buffer.speech_stopped":
                final = None
                replies.started = time.perf_counter()
            elif kind == "response.created" and final is None:
                final = event["response"]["id"]
            done = replies.feed(event)
            if done is not None and all_heard and done.response_id == final:
                return done
        raise SpiritLMConnectionError("the session ended before the response")  # pragma: no cover


class _Replies:
    """Assembles replies from their events; `feed` returns a reply when it is done."""

    def __init__(self, sample_rate: int, started: float | None) -> None:
        self.sample_rate = sample_rate
        self.started = time.perf_counter() if started is None else started
        self.replies: dict[str, Reply] = {}
        self.audio: dict[str, bytearray] = {}

    def feed(self, event: dict[str, Any]) -> Reply | None:
        kind = event["type"]
        if kind == "error":
            raise _error(event)
        if kind == "response.created":
            response_id = event["response"]["id"]
            self.replies[response_id] = Reply(response_id, "in_progress", self.sample_rate)
            self.audio[response_id] = bytearray()
            return None
        reply = self.replies.get(event.get("response_id") or event.get("response", {}).get("id"))
        if reply is None:
            return None
        if kind == "response.output_audio.delta":
            if reply.first_audio_seconds is None:
                reply.first_audio_seconds = time.perf_counter() - self.started
            self.audio[reply.response_id] += base64.b64decode(event["delta"])
        elif kind == "response.output_audio_transcript.delta":
            reply.transcript += event["delta"]
        elif kind == "response.output_text.delta":
            reply.text += event["delta"]
        elif kind == "response.done":
            done = event["response"]
            reply.status = done["status"]
            reply.status_details = done.get("status_details")
            reply.usage = done.get("usage") or {}
            reply.audio = bytes(self.audio.pop(reply.response_id))
            return reply
        return None


async def _receive(ws: ClientConnection) -> dict[str, Any]:
    try:
        frame = await ws.recv()
    except ConnectionClosed as error:
        raise _closed(error) from None
    event = json.loads(frame)
    event["type"] = _GA_NAMES.get(event.get("type"), event.get("type"))
    return event


def _error(event: dict[str, Any]) -> SpiritLMError:
    details = event.get("error") or {}
    status = 500 if details.get("type") == "server_error" else 400
    return SpiritLMError(
        status,
        str(details.get("message", "the session reported an error")),
        param=details.get("param"),
        code=details.get("code"),
    )


def _closed(error: ConnectionClosed) -> SpiritLMError:
    close = error.rcvd
    if close is not None and close.code == 1013:
        return SpiritLMError(503, close.reason or "the gateway is busy; retry later")
    reason = f" ({close.code} {close.reason})" if close is not None else ""
    return SpiritLMConnectionError(f"the realtime session closed{reason}")


def _output_rate(session: dict[str, Any]) -> int:
    audio = session.get("audio") or {}
    rate = (audio.get("output") or {}).get("format", {}).get("rate")
    return int(rate or session.get("output_audio_sample_rate") or OUTPUT_RATE)


# ---- a whole turn from a file ------------------------------------------------------------


def read_wav_pcm16(path: str | Path) -> tuple[bytes, int]:
    """A 16-bit PCM WAV file as mono pcm16 bytes (channels averaged) and its sample rate."""
    with wave.open(str(path), "rb") as file:
        if file.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        channels, rate = file.getnchannels(), file.getframerate()
        frames = file.readframes(file.getnframes())
    if channels == 1:
        return frames, rate
    samples = array.array("h", frames)
    mono = array.array(
        "h", (sum(samples[i : i + channels]) // channels for i in range(0, len(samples), channels))
    )
    return mono.tobytes(), rate


async def stream_audio(
    session: RealtimeSession, pcm16: bytes, rate: int, *, speed: float = 1.0
) -> None:
    """Append the audio in 100 ms pieces, paced at `speed` x real time (0 = no pacing)."""
    step = int(CHUNK_SECONDS * rate) * 2
    start = time.perf_counter()
    for index, offset in enumerate(range(0, len(pcm16), step)):
        await session.append(pcm16[offset : offset + step])
        if speed > 0:
            due = start + (index + 1) * CHUNK_SECONDS / speed
            await asyncio.sleep(max(0.0, due - time.perf_counter()))


async def converse(
    path: str | Path,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    voice: str | None = None,
    speed: float = 1.0,
    server_vad: bool = False,
    max_output_tokens: int | None = None,
    temperature: float | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> Reply:
    """Say the WAV file to the model and return its reply.

    The file streams at `speed` x real time; then the turn ends with a commit (or, with
    `server_vad`, with silence the server's VAD recognises as the end of the turn).
    """
    pcm, rate = read_wav_pcm16(path)
    session = await RealtimeSession.connect(base_url, api_key, model=model)
    async with session:
        detection = {"type": "server_vad", "silence_duration_ms": 1000} if server_vad else None
        update: dict[str, Any] = {
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": rate},
                    "turn_detection": detection,
                },
                "output": {"format": {"type": "audio/pcm", "rate": OUTPUT_RATE}},
            }
        }
        if voice is not None:
            update["audio"]["output"]["voice"] = voice
        if max_output_tokens is not None:
            update["max_output_tokens"] = max_output_tokens
        if temperature is not None:
            update["temperature"] = temperature
        await session.update(**update)
        await stream_audio(session, pcm, rate, speed=speed)
        if server_vad:
            await stream_audio(session, bytes(rate * 3), rate, speed=speed)  # 1.5 s of silence
            return await session.collect_last_turn(on_event=on_event)
        await session.commit()
        return await session.respond(on_event=on_event)
