"""One model response of a realtime session: prompt -> generation -> server events.

The conversation so far becomes one Spirit LM prompt (conversation.py), the engine streams the
generation, and each segment becomes a content part of one assistant item: speech segments an
``output_audio`` part (audio deltas as the vocoder produces them, then a transcript by the LM),
text segments an ``output_text`` part. A reply ends when its turn is over: at the model's line
end, or, spoken, at silence after speech (service/lm/ending.py, docs/speech-turns.md); one that
reaches max_output_tokens is ``incomplete``.

Cancelling (``cancel``: response.cancel or barge-in) cancels the generation task, which closes
the engine stream: the vLLM request is aborted and the vocoder stream cancelled. Audio deltas
still waiting to be sent are dropped by the session; the assistant item keeps only the speech
tokens behind the audio that was sent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from service.gateway.engine import (
    AudioOut,
    Engine,
    SegmentStart,
    SpeechTokensOut,
    TextOut,
)
from service.gateway.errors import APIError
from service.gateway.metrics import GatewayMetrics
from service.gateway.realtime import audio_format
from service.gateway.realtime.config import TOP_P
from service.gateway.realtime.conversation import (
    Conversation,
    Item,
    Part,
    history_inputs,
    keep_speech_samples,
)
from service.gateway.realtime.prompting import PromptBuilder
from service.gateway.realtime.protocol import ServerEvents, new_id
from service.gateway.tasks import Tasks
from service.lm.client import SamplingParams
from service.lm.ending import ONE_LINE
from service.lm.generation import GenerationResult
from service.lm.prompt import OutputModality

log = logging.getLogger("spiritlm.gateway.realtime")

# Where a reply's first audio time goes, phase by phase, each ending when: the user's turns are
# encoded (encode), the prompt is built (prompt), the LM's first speech token is here (lm), the
# vocoder's first audio is here (vocoder), its delta is on the wire (send). Their times add up to
# spiritlm_realtime_first_audio_seconds (metrics.py).
FIRST_AUDIO_PHASES = ("encode", "prompt", "lm", "vocoder", "send")


@dataclass(frozen=True)
class ResponseRequest:
    modality: OutputModality
    modalities: tuple[str, ...]
    max_tokens: int
    temperature: float
    instructions: str
    conversation: bool  # False: out of band (conversation "none"), the history is not changed
    metadata: dict[str, str] | None
    trigger: str  # what ended the user's turn: "vad" | "commit" | "create"
    turn_ended_at: float  # time.perf_counter() when it did
    event_id: str | None = None


@dataclass
class ResponseContext:
    """What a response needs from its session."""

    engine: Engine
    tasks: Tasks
    model: str
    voice: str | int
    speaker: int
    output_rate: int
    conversation: Conversation
    prompts: PromptBuilder
    events: ServerEvents
    metrics: GatewayMetrics
    send: Callable[[dict[str, Any] | None], None]
    # Waits while the client is behind on reading, which holds back the generation too.
    send_audio: Callable[[dict[str, Any], Callable[[], None]], Awaitable[None]]
    # The wire format of audio deltas: the vocoder's pcm16 at `output_rate`, G.711-companded
    # when the session asks for it (audio_format.py).
    output_format: str = audio_format.PCM16


class Response:
    def __init__(self, ctx: ResponseContext, request: ResponseRequest) -> None:
        self.ctx = ctx
        self.request = request
        self.id = new_id("resp")
        self.item = Item(new_id("item"), "assistant", status="in_progress")
        self.status = "in_progress"
        self.status_details: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.cancel_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._inner: asyncio.Task[None] | None = None
        self._open: Part | None = None
        self._closed_parts: set[int] = set()
        self._first_audio_seen = False
        self._phase_ends: dict[str, float] = {}
        self._item_added = False
        self._prompt_tokens = 0
        self._result = GenerationResult()

    # ---- control

    def start(self) -> None:
        self.task = asyncio.create_task(self._lifecycle(), name=f"realtime-{self.id}")

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self._inner is not None:
            self._inner.cancel()

    @property
    def active(self) -> bool:
        return self.task is not None and not self.task.done()

    async def _lifecycle(self) -> None:
        self._send("response.created", response=self.render())
        inner = asyncio.create_task(self._generate())
        self._inner = inner
        if self.cancel_reason is not None:
            inner.cancel()
        try:
            await asyncio.wait({inner})
        finally:
            if not inner.done():  # the session is closing
                inner.cancel()
                await asyncio.wait({inner})
            self._settle(inner)
            self._finish()

    def _settle(self, inner: asyncio.Task[None]) -> None:
        if inner.cancelled():
            self.status = "cancelled"
            self.status_details = {
                "type": "cancelled",
                "reason": self.cancel_reason or "client_cancelled",
            }
            return
        error = inner.exception()
        if error is None:
            if self._result.finish_reason == "length":
                self.status = "incomplete"
                self.status_details = {"type": "incomplete", "reason": "max_output_tokens"}
            else:
                self.status = "completed"
            return
        self.status = "failed"
        if isinstance(error, APIError):
            message, code = error.message, error.code or f"http_{error.status}"
        else:
            log.error("realtime response %s failed", self.id, exc_info=error)
            message, code = "internal error while generating the response", "server_error"
        self.status_details = {
            "type": "failed",
            "error": {"type": "server_error", "code": code, "message": message},
        }
        self.ctx.send(
            {
                "type": "error",
                "event_id": new_id("event"),
                "error": {
                    "type": "server_error",
                    "code": code,
                    "message": message,
                    "param": None,
                    "event_id": self.request.event_id,
                },
            }
        )

    # ---- generation

    async def _generate(self) -> None:
        ctx, request = self.ctx, self.request
        items = list(ctx.conversation.items)
        turns = await history_inputs(items)
        self._phase_ended("encode")
        prepared = await ctx.prompts.prepare(
            request.instructions, turns, request.modality, request.max_tokens
        )
        self._prompt_tokens = len(prepared.prompt_ids)
        previous = ctx.conversation.add(self.item) if request.conversation else None
        self._item_added = True
        self._send(
            "response.output_item.added", response_id=self.id, output_index=0, item=self._item()
        )
        if request.conversation:
            self.ctx.send(
                ctx.events.event(
                    "conversation.item.added", previous_item_id=previous, item=self._item()
                )
            )
        params = SamplingParams(
            max_tokens=request.max_tokens, temperature=request.temperature, top_p=TOP_P
        )
        if request.modality is OutputModality.TEXT:
            ending = ONE_LINE  # a text turn ends at its line end
        else:
            ending = await ctx.tasks.spoken_turn_end(ctx.model)
        self._phase_ended("prompt")
        outputs = ctx.engine.run(
            prepared,
            params,
            ctx.model,
            speaker=ctx.speaker,
            sample_rate=ctx.output_rate,
            affinity=ctx.conversation.id,
            result=self._result,
            ending=ending,
        )
        async with aclosing(outputs) as stream:
            async for out in stream:
                if isinstance(out, SegmentStart):
                    await self._close_part()
                    self._open_part("audio" if out.kind == "speech" else "text")
                elif isinstance(out, TextOut):
                    self._text(out.text)
                elif isinstance(out, SpeechTokensOut) and self._open is not None:
                    self._phase_ended("lm")
                    self._open.tokens += out.tokens
                elif isinstance(out, AudioOut) and self._open is not None:
                    self._phase_ended("vocoder")
                    await self._audio(self._open, out.pcm16)
        await self._close_part()

    def _open_part(self, kind: str) -> None:
        part = Part(kind, sample_rate=self.ctx.output_rate, finished=False)  # type: ignore[arg-type]
        self.item.parts.append(part)
        self._open = part
        self._send_part("response.content_part.added", part)

    def _text(self, text: str) -> None:
        part = self._open
        if part is None or not text:
            return
        part.text += text
        self._send_delta("response.output_text.delta", part, delta=text)

    async def _audio(self, part: Part, pcm16: bytes) -> None:
        samples = len(pcm16) // 2
        event = self.ctx.events.event(
            "response.output_audio.delta",
            **self._where(part),
            delta=base64.b64encode(audio_format.from_pcm16(self.ctx.output_format, pcm16)).decode(),
        )
        assert event is not None

        def sent() -> None:
            part.samples_sent += samples
            if not self._first_audio_seen:
                self._phase_ended("send")
                self._first_audio_seen = True
                elapsed = time.perf_counter() - self.request.turn_ended_at
                self.ctx.metrics.realtime_first_audio.labels(self.request.trigger).observe(elapsed)
                self._observe_phases()

        await self.ctx.send_audio(event, sent)

    def _phase_ended(self, phase: str) -> None:
        if not self._first_audio_seen:
            self._phase_ends.setdefault(phase, time.perf_counter())

    def _observe_phases(self) -> None:
        started = self.request.turn_ended_at
        histogram = self.ctx.metrics.realtime_first_audio_phase
        for phase in FIRST_AUDIO_PHASES:
            ended = self._phase_ends.get(phase, started)
            histogram.labels(phase).observe(max(0.0, ended - started))
            started = ended

    async def _close_part(self) -> None:
        """Finish the open part normally: its transcript, done events."""
        part = self._open
        if part is None:
            return
        if part.kind == "audio":
            part.finished = True
            await self._transcript(part)
        part.finished = True
        self._part_done(part)
        self._open = None

    async def _transcript(self, part: Part) -> None:
        ctx = self.ctx
        deltas = ctx.tasks.transcript(ctx.model, part.tokens, affinity=ctx.conversation.id)
        async with aclosing(deltas) as stream:
            async for delta in stream:
                part.text += delta
                self._send_delta("response.output_audio_transcript.delta", part, delta=delta)

    def _part_done(self, part: Part) -> None:
        key = id(part)
        if key in self._closed_parts:
            return
        self._closed_parts.add(key)
        if part.kind == "audio":
            self._send_delta("response.output_audio.done", part)
            self._send_delta("response.output_audio_transcript.done", part, transcript=part.text)
        else:
            self._send_delta("response.output_text.done", part, text=part.text)
        self._send_part("response.content_part.done", part)

    # ---- the end

    def _finish(self) -> None:
        part = self._open
        if part is not None:
            if part.kind == "audio" and not part.finished:
                fallback = self.ctx.conversation.samples_per_token(self.ctx.output_rate)
                keep_speech_samples(part, part.samples_sent, fallback)
            self._part_done(part)
            self._open = None
        self.item.status = "completed" if self.status == "completed" else "incomplete"
        output_tokens = len(self._result.output_ids)
        self.usage = {
            "total_tokens": self._prompt_tokens + output_tokens,
            "input_tokens": self._prompt_tokens,
            "output_tokens": output_tokens,
        }
        if self._item_added:
            self._send(
                "response.output_item.done", response_id=self.id, output_index=0, item=self._item()
            )
            if self.request.conversation:
                self.ctx.send(self.ctx.events.event("conversation.item.done", item=self._item()))
        self._send("response.done", response=self.render())

    # ---- rendering

    def render(self) -> dict[str, Any]:
        ctx = self.ctx
        events = ctx.events
        body: dict[str, Any] = {
            "object": "realtime.response",
            "id": self.id,
            "status": self.status,
            "status_details": self.status_details,
            "output": [self._item()] if self._item_added else [],
            "conversation_id": ctx.conversation.id if self.request.conversation else None,
            events.modalities_key(): list(self.request.modalities),
            "max_output_tokens": self.request.max_tokens,
            "metadata": self.request.metadata,
            "usage": self.usage,
        }
        if events.dialect == "beta":
            body.update(voice=ctx.voice, output_audio_format=ctx.output_format)
        else:
            rendered = audio_format.render_ga(ctx.output_format, ctx.output_rate)
            body["audio"] = {"output": {"format": rendered, "voice": ctx.voice}}
        return body

    def _item(self) -> dict[str, Any]:
        return self.ctx.events.item(self.item)

    def _where(self, part: Part) -> dict[str, Any]:
        return {
            "response_id": self.id,
            "item_id": self.item.id,
            "output_index": 0,
            "content_index": self.item.parts.index(part),
        }

    def _send(self, name: str, **fields: Any) -> None:
        self.ctx.send(self.ctx.events.event(name, **fields))

    def _send_delta(self, name: str, part: Part, **fields: Any) -> None:
        self.ctx.send(self.ctx.events.event(name, **self._where(part), **fields))

    def _send_part(self, name: str, part: Part) -> None:
        self.ctx.send(
            self.ctx.events.event(name, **self._where(part), part=self.ctx.events.part(part))
        )
