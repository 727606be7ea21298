"""WS /v1/stream: streaming synthesis of speech tokens as the LM produces them.

Query: ``model``, ``speaker`` (default 2), ``sample_rate`` (default 16000), ``seed`` (for the
random style fallback of docs/format.md#token-string-to-units). Problems found before the
upgrade (unknown model, bad parameter, too many streams, not ready) are refused with an HTTP
error response in the OpenAI error shape.

Client -> worker, JSON text frames: ``{"type": "tokens", "tokens": [...], "context": false}``
any number of times, then ``{"type": "end"}``; ``{"type": "cancel"}`` at any time.
Worker -> client: binary frames of pcm16 little-endian mono at ``sample_rate``, sent as soon as
the vocoder releases audio; then ``{"type": "done", "samples": N}`` and a normal close.
Errors: ``{"type": "error", "message", "status"}`` and a close with 1008 (bad input) or 1011.
``context`` tokens come first; their audio is cut at the exact first sample of the first
generated unit (see `session`), not by the reference's token-count proportion.

Two tasks serve a session: one reads frames (so cancel and disconnect are seen at once), one
vocodes. The vocoding task takes the tokens in slices of about one chunk
(`StreamingVocoder.slice_units`): it plans their chunks on the worker's planning thread
(`StreamSession.plan`, `WorkerState.plan`), has the worker's vocoder scheduler render them
(service/speech_worker/batcher.py: with other streams' chunks, most urgent first), and sends
the audio. Cancelling waits for one slice at most.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.to_thread
import numpy as np
from anyio import CancelScope
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from fastapi import WebSocket
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from service.audio.encode import check_sample_rate
from service.speech.streaming import RenderJob
from service.speech_worker.protocol import (
    CLIENT_MESSAGE,
    CLOSE_NORMAL,
    CancelMessage,
    DoneMessage,
    EndMessage,
    ErrorMessage,
    TokensMessage,
    WorkerRequestError,
)
from service.speech_worker.session import StreamSession, check_speaker, check_token_budget
from service.speech_worker.state import WorkerState

log = logging.getLogger("spiritlm.speech_worker")

T = TypeVar("T")

QUERY_PARAMS = ("model", "speaker", "sample_rate", "seed")
# WebSocket close reasons are limited to 123 bytes.
MAX_REASON_BYTES = 120


@dataclass(frozen=True)
class StreamParams:
    model: str | None
    speaker: int
    sample_rate: int
    seed: int | None


def stream_params(query: Mapping[str, str]) -> StreamParams:
    unknown = sorted(set(query) - set(QUERY_PARAMS))
    if unknown:
        raise WorkerRequestError(
            400,
            f"unknown query parameter(s) {', '.join(unknown)}; expected {', '.join(QUERY_PARAMS)}",
            param=unknown[0],
            code="invalid_value",
        )
    speaker = _integer(query, "speaker")
    sample_rate = _integer(query, "sample_rate")
    params = StreamParams(
        model=query.get("model") or None,
        speaker=2 if speaker is None else speaker,
        sample_rate=16000 if sample_rate is None else sample_rate,
        seed=_integer(query, "seed"),
    )
    try:
        check_sample_rate(params.sample_rate)
    except ValueError as error:
        raise WorkerRequestError(
            400, str(error), param="sample_rate", code="invalid_value"
        ) from None
    return params


def _integer(query: Mapping[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise WorkerRequestError(
            400, f"{name}: {text!r} is not an integer", param=name, code="invalid_value"
        ) from None


def parse_message(text: str) -> TokensMessage | EndMessage | CancelMessage:
    try:
        return CLIENT_MESSAGE.validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        loc = [str(part) for part in first["loc"]]
        if loc and loc[0] in ("tokens", "end", "cancel"):
            loc = loc[1:]  # the union's tag, not a field of the message
        where = f"{'.'.join(loc)}: " if loc else ""
        raise WorkerRequestError(
            400,
            f"invalid stream message: {where}{first['msg']} (expected "
            '{"type": "tokens"|"end"|"cancel", ...})',
            param=".".join(loc) or "type",
            code="invalid_message",
        ) from None


class Outcome:
    """How a session ended; the first cause wins (an error, then the resulting disconnect)."""

    def __init__(self) -> None:
        self.kind = "disconnected"
        self.error: WorkerRequestError | None = None
        self._settled = False

    def settle(self, kind: str, error: WorkerRequestError | None = None) -> None:
        if not self._settled:
            self._settled = True
            self.kind, self.error = kind, error


# ---- the endpoint


async def stream_endpoint(websocket: WebSocket) -> None:
    state: WorkerState = websocket.app.state.worker
    try:
        params = stream_params(websocket.query_params)
        stack = state.models.get(params.model)
        check_speaker(stack, params.speaker)
        if state.active_streams >= state.settings.max_streams:
            raise WorkerRequestError(
                429,
                f"too many synthesis streams: this worker serves {state.settings.max_streams} "
                "at once; retry later",
                code="too_many_streams",
            )
    except WorkerRequestError as error:
        await reject(websocket, error)
        return
    settings = state.settings
    session = StreamSession(
        stack,
        speaker=params.speaker,
        sample_rate=params.sample_rate,
        max_tokens=settings.max_tokens,
        first_chunk_units=settings.first_chunk_units,
        chunk_units=settings.chunk_units,
        max_chunk_units=settings.max_chunk_units,
        incremental=state.models.incremental,
        seed=params.seed,
    )
    # Counted before the first await, so concurrent handshakes cannot pass the limit together.
    state.active_streams += 1
    state.metrics.active_streams.inc()
    outcome = Outcome()
    try:
        await websocket.accept()
        await _serve(websocket, session, state, outcome)
        await _close(websocket, outcome)
    finally:
        state.active_streams -= 1
        state.metrics.active_streams.dec()
        state.metrics.streams.labels(stack.variant, outcome.kind).inc()


async def reject(websocket: WebSocket, error: WorkerRequestError) -> None:
    """Refuse a handshake with an HTTP error (or, without that extension, an error frame)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(error.body(), error.status))
        return
    await websocket.accept()
    outcome = Outcome()
    outcome.settle("error", error)
    await _close(websocket, outcome)


async def _serve(
    websocket: WebSocket, session: StreamSession, state: WorkerState, outcome: Outcome
) -> None:
    send, receive = anyio.create_memory_object_stream[TokensMessage | EndMessage](math.inf)
    async with anyio.create_task_group() as group:
        budget = state.settings.max_tokens
        group.start_soon(_read, websocket, send, budget, outcome, group.cancel_scope)
        group.start_soon(_vocode, websocket, receive, session, state, outcome, group.cancel_scope)


async def _read(
    websocket: WebSocket,
    inbox: MemoryObjectSendStream[TokensMessage | EndMessage],
    max_tokens: int,
    outcome: Outcome,
    scope: CancelScope,
) -> None:
    ended = False
    # Checked here too, so a fast sender cannot queue more than the limit ahead of the vocoder.
    received = 0
    try:
        while True:
            frame = await websocket.receive()
            if frame["type"] == "websocket.disconnect":
                outcome.settle("disconnected")
                break
            if frame.get("text") is None:
                raise WorkerRequestError(
                    400,
                    "binary frames are not accepted: send JSON text frames",
                    code="invalid_message",
                )
            message = parse_message(frame["text"])
            if isinstance(message, CancelMessage):
                outcome.settle("cancelled")
                break
            if ended:
                raise WorkerRequestError(
                    400, f"'{message.type}' message after 'end'", code="invalid_message"
                )
            if isinstance(message, TokensMessage):
                received += len(message.tokens)
                check_token_budget(received, max_tokens)
            ended = isinstance(message, EndMessage)
            await inbox.send(message)
    except WorkerRequestError as error:
        outcome.settle("error", error)
    scope.cancel()


async def _vocode(
    websocket: WebSocket,
    inbox: MemoryObjectReceiveStream[TokensMessage | EndMessage],
    session: StreamSession,
    state: WorkerState,
    outcome: Outcome,
    scope: CancelScope,
) -> None:
    model = session.stack.variant
    timer = _StreamTimer()
    try:
        async for message in inbox:
            await _hold_while_ahead(session, state.settings.stream_lead_seconds)
            timer.start()
            # Everything that queued while this stream waited (for the worker, or while ahead)
            # goes in at once, in larger chunks (`StreamingVocoder.chunk_cap`).
            messages = [message, *_waiting(inbox)]
            tokens = []
            for queued in messages:
                if isinstance(queued, TokensMessage):
                    tokens += session.accept(queued.tokens, context=queued.context)
            for batch in session.batches(tokens):
                jobs = await state.plan(timer.timed, session.plan, batch)
                chunks = await _render(session, jobs, state, timer)
                data = await anyio.to_thread.run_sync(session.deliver, chunks)
                await _send_audio(websocket, data, timer, state, model)
            if not isinstance(messages[-1], EndMessage):
                continue
            jobs = await state.plan(timer.timed, session.plan_finish)
            chunks = await _render(session, jobs, state, timer)
            data = await anyio.to_thread.run_sync(session.deliver_last, chunks)
            await _send_audio(websocket, data, timer, state, model)
            await websocket.send_json(DoneMessage(samples=session.sent_samples).model_dump())
            outcome.settle("done")
            break
    except WorkerRequestError as error:
        outcome.settle("error", error)
    except (WebSocketDisconnect, OSError):
        outcome.settle("disconnected")
    except Exception:
        log.exception("stream failed")
        outcome.settle("error", WorkerRequestError(500, "internal error in the speech worker"))
    if outcome.kind == "done":
        audio_seconds = session.produced / session.stack.sample_rate
        state.metrics.decode_seconds.labels(model, "stream").observe(timer.compute)
        state.metrics.observe_compute(model, "stream", timer.compute, audio_seconds)
    scope.cancel()


async def _render(
    session: StreamSession, jobs: list[RenderJob], state: WorkerState, timer: _StreamTimer
) -> list[np.ndarray]:
    """The session's planned chunks, rendered by the worker's vocoder scheduler."""
    started = time.perf_counter()
    try:
        return await state.batcher.render(session.vocoder, jobs, session.urgency())
    finally:
        # Wall time, waiting for other streams' chunks included: the stream's own cost is not
        # separable from a batched forward pass.
        timer.compute += time.perf_counter() - started


async def _hold_while_ahead(session: StreamSession, lead_seconds: float) -> None:
    """Wait while the listener has more than `lead_seconds` of audio left to play.

    Every chunk recomputes the vocoder's receptive field on both sides (about 0.8 s of frames
    each, docs/benchmarks.md), so one large chunk costs much less than several small ones. A
    stream that is ahead lets its units queue (the gateway sends them as the LM makes them) and
    renders them together when its buffered audio gets down to `lead_seconds`. Its first chunk
    never waits, and a cancel still ends the stream at once (its reader cancels this).
    """
    if lead_seconds <= 0:
        return
    started, runs_out = session.urgency()
    if started:
        await anyio.sleep(max(0.0, runs_out - time.monotonic() - lead_seconds))


def _waiting(
    inbox: MemoryObjectReceiveStream[TokensMessage | EndMessage],
) -> list[TokensMessage | EndMessage]:
    """The messages already queued, up to and including an `end`."""
    waiting: list[TokensMessage | EndMessage] = []
    while not waiting or not isinstance(waiting[-1], EndMessage):
        try:
            waiting.append(inbox.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return waiting


async def _send_audio(
    websocket: WebSocket, data: bytes, timer: _StreamTimer, state: WorkerState, model: str
) -> None:
    if not data:
        return
    await websocket.send_bytes(data)
    first = timer.first_audio()
    if first is not None:
        state.metrics.first_audio_seconds.labels(model).observe(first)


class _StreamTimer:
    """Compute time of a stream, and the delay from its first tokens to its first audio."""

    def __init__(self) -> None:
        self.compute = 0.0
        self._started: float | None = None
        self._first_sent = False

    def start(self) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def timed(self, function: Callable[..., T], *args: object) -> T:
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.compute += time.perf_counter() - started

    def first_audio(self) -> float | None:
        if self._first_sent or self._started is None:
            return None
        self._first_sent = True
        return time.perf_counter() - self._started


async def _close(websocket: WebSocket, outcome: Outcome) -> None:
    """End the connection as the outcome says; the client may already be gone."""
    if outcome.kind == "disconnected":
        return
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        if outcome.kind == "error" and outcome.error is not None:
            error = outcome.error
            frame = ErrorMessage(message=error.message, status=error.status)
            await websocket.send_json(frame.model_dump())
            reason = error.message.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
            await websocket.close(error.close_code, reason)
        elif outcome.kind == "cancelled":
            await websocket.close(CLOSE_NORMAL, "cancelled")
        else:
            await websocket.close(CLOSE_NORMAL)
