"""POST /v1/chat/completions: a conversation -> one Spirit LM generation -> text or speech.

``modalities: ["text"]`` (the default) generates text; ``["text", "audio"]`` generates speech,
returned in ``message.audio`` (non-streamed: one file in ``audio.format``; streamed: base64
pieces of the same format in ``delta.audio.data``, which concatenated give the file; for
``pcm16`` they are raw samples). Audio is always produced at 24 kHz, the rate OpenAI clients
assume for pcm16.

A spoken reply ends when its turn is over (the model's line end, or silence after speech:
docs/speech-turns.md) with finish_reason "stop", or at max_tokens with "length".
``message.audio.transcript`` is the LM's own transcript of the reply: Spirit LM generates speech
tokens with no parallel text, so once the reply is generated the same LM transcribes its tokens
with the shared ASR prompt (service/gateway/tasks.py), a second, shorter generation per reply;
streamed, it arrives as ``delta.audio.transcript`` pieces after the audio.

Stop strings apply to generated text (so to ``["text"]`` only); where generations end is decided
in service/lm/ending.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi.responses import StreamingResponse

from service.audio.encode import StreamEncoder, check_output_format, encode_audio
from service.audio.pcm import pcm16_to_float
from service.errors import error_body
from service.gateway.chat.conversation import conversation_inputs, text_chars
from service.gateway.chat.memory import ChatMemory
from service.gateway.chat.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionAudio,
    ChatCompletionRequest,
    Choice,
    Usage,
)
from service.gateway.engine import AudioOut, Engine, SpeechTokensOut, TextOut
from service.gateway.errors import APIError, error_type
from service.gateway.sampling import parse_stops
from service.gateway.sse import SSE_DONE, SSE_HEADERS, sse
from service.gateway.state import GatewayState
from service.gateway.tasks import Tasks, check_prompt_chars
from service.gateway.timings import Timings
from service.gateway.voices import model_voices, resolve_voice
from service.lm.client import SamplingParams
from service.lm.ending import Ending
from service.lm.generation import GenerationResult, PreparedPrompt
from service.lm.prompt import OutputModality, build_prompt

log = logging.getLogger("spiritlm.gateway.chat")

ROUTE = "/v1/chat/completions"
OUTPUT_SAMPLE_RATE = 24000
DEFAULT_MAX_TOKENS = 512
_ENCODER_FORMAT = {"pcm16": "pcm"}  # our encoder's name for raw 16-bit samples


@dataclass(frozen=True)
class ChatPlan:
    """Everything one request needs, validated before any generation starts."""

    model: str
    prepared: PreparedPrompt
    params: SamplingParams
    speech: bool
    speaker: int
    audio_format: str  # the request's name (wav, pcm16, ...)
    ending: Ending
    affinity: str | None

    @property
    def encoder_format(self) -> str:
        return _ENCODER_FORMAT.get(self.audio_format, self.audio_format)


@dataclass
class Outcome:
    """How the generation ended; filled in when the events are exhausted."""

    finish_reason: str = "stop"
    speech_tokens: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: _usage_of(0, 0))

    @property
    def tokens(self) -> str:
        return "".join(self.speech_tokens)


async def chat_completion(
    request: ChatCompletionRequest,
    state: GatewayState,
    memory: ChatMemory,
    session_id: str | None,
) -> ChatCompletion | StreamingResponse:
    plan = await plan_chat(request, state, memory, session_id)
    timings = Timings(state.metrics, ROUTE, OUTPUT_SAMPLE_RATE)
    outcome = Outcome()
    events = chat_events(plan, state.engine, timings, outcome)
    response_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    transcribe = _Transcriber(plan, state.tasks)
    if not request.stream:
        return await _complete(plan, events, outcome, memory, transcribe, response_id, created)
    # Wait for the first output so that failures before it (no LM worker, prompt too long)
    # are HTTP errors rather than an error event inside a 200 stream.
    first = await _first(events)
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    chunks = _ChunkMaker(response_id, created, plan.model, include_usage)
    return StreamingResponse(
        _ChatStream(plan, outcome, memory, transcribe, chunks).body(first, events),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


# ---- validation -------------------------------------------------------------------------------


async def plan_chat(
    request: ChatCompletionRequest, state: GatewayState, memory: ChatMemory, session_id: str | None
) -> ChatPlan:
    engine = state.engine
    check_unsupported(request)
    model = engine.resolve_model(request.model)
    speech = _wants_speech(request.modalities)
    max_tokens = _max_tokens(request, engine.max_tokens_limit)
    stops = parse_stops(request.stop)
    audio = request.audio
    if speech and audio:
        fmt = _ENCODER_FORMAT.get(audio.format, audio.format)
        check_output_format(fmt, OUTPUT_SAMPLE_RATE, format_param="audio.format")
    voice = audio.voice if audio else None
    speaker = resolve_voice(model_voices(engine.layout, model), voice, model, "audio.voice")
    check_prompt_chars(text_chars(request.messages), "messages", state.settings.max_prompt_chars)
    inputs = await conversation_inputs(request.messages, engine, model, memory, state.settings)
    modality = OutputModality.SPEECH if speech else OutputModality.TEXT
    prepared = await engine.prepare(build_prompt(inputs, modality), modality, model)
    if speech:
        ending = await state.tasks.spoken_turn_end(model, stops)
    else:
        ending = Ending(stops=stops)
    return ChatPlan(
        model=model,
        prepared=prepared,
        params=request.sampling(max_tokens),
        speech=speech,
        speaker=speaker,
        audio_format=audio.format if audio else "wav",
        ending=ending,
        affinity=session_id or request.prompt_cache_key or request.user or None,
    )


def check_unsupported(request: ChatCompletionRequest) -> None:
    """Refuse, by name, what this server does not honour (the table: chat/protocol.py)."""
    request.check_supported()


def _wants_speech(modalities: list[str] | None) -> bool:
    chosen = set(modalities or ["text"])
    if chosen == {"text"}:
        return False
    if chosen == {"text", "audio"}:
        return True
    raise APIError(400, 'modalities: use ["text"] or ["text", "audio"]', param="modalities")


def _max_tokens(request: ChatCompletionRequest, limit: int) -> int:
    if request.max_completion_tokens is not None:
        value, param = request.max_completion_tokens, "max_completion_tokens"
    elif request.max_tokens is not None:
        value, param = request.max_tokens, "max_tokens"
    else:
        return min(DEFAULT_MAX_TOKENS, limit)
    if value > limit:
        raise APIError(400, f"{param} {value} exceeds the limit of {limit}", param=param)
    return value


# ---- generation -------------------------------------------------------------------------------


async def chat_events(
    plan: ChatPlan, engine: Engine, timings: Timings, outcome: Outcome
) -> AsyncIterator[str | bytes]:
    """Text pieces (str) and pcm16 audio chunks (bytes) as they come; then fills `outcome`."""
    result = GenerationResult()
    outputs = engine.run(
        plan.prepared,
        plan.params,
        plan.model,
        speaker=plan.speaker,
        sample_rate=OUTPUT_SAMPLE_RATE,
        synthesize=plan.speech,
        affinity=plan.affinity,
        result=result,
        ending=plan.ending,
    )
    # aclosing: leaving early (client gone) closes the engine's stream at once, which aborts
    # the vLLM request and the vocoder session.
    async with contextlib.aclosing(outputs):
        async for item in outputs:
            timings.observe(item)
            if isinstance(item, TextOut):
                yield item.text
            elif isinstance(item, AudioOut):
                yield item.pcm16
            elif isinstance(item, SpeechTokensOut):
                outcome.speech_tokens.append(item.tokens)
    timings.finish()
    outcome.finish_reason = "length" if result.finish_reason == "length" else "stop"
    outcome.usage = _usage_of(result.usage.prompt_tokens, result.usage.completion_tokens)


class _Transcriber:
    """The LM's transcript of a spoken reply (service/gateway/tasks.py), as text deltas."""

    def __init__(self, plan: ChatPlan, tasks: Tasks) -> None:
        self.plan = plan
        self.tasks = tasks

    def __call__(self, tokens: str) -> AsyncIterator[str]:
        return self.tasks.transcript(self.plan.model, tokens, affinity=self.plan.affinity)


def _usage_of(prompt: int, completion: int) -> Usage:
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


async def _first(events: AsyncIterator[str | bytes]) -> str | bytes | None:
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None


# ---- one response -----------------------------------------------------------------------------


async def _complete(
    plan: ChatPlan,
    events: AsyncIterator[str | bytes],
    outcome: Outcome,
    memory: ChatMemory,
    transcribe: _Transcriber,
    response_id: str,
    created: int,
) -> ChatCompletion:
    text: list[str] = []
    pcm = bytearray()
    async for piece in events:
        if isinstance(piece, str):
            text.append(piece)
        else:
            pcm += piece
    audio = None
    if plan.speech:
        samples = pcm16_to_float(bytes(pcm))
        encoded = await asyncio.to_thread(
            encode_audio, samples, OUTPUT_SAMPLE_RATE, plan.encoder_format
        )
        transcript = "".join([delta async for delta in transcribe(outcome.tokens)])
        audio_id, expires = memory.seal_audio(plan.model, outcome.tokens)
        audio = ChatCompletionAudio(
            id=audio_id,
            data=base64.b64encode(encoded).decode(),
            expires_at=expires,
            transcript=transcript,
        )
    message = AssistantMessage(content=None if plan.speech else "".join(text), audio=audio)
    return ChatCompletion(
        id=response_id,
        created=created,
        model=plan.model,
        choices=[Choice(message=message, finish_reason=outcome.finish_reason)],  # type: ignore[arg-type]
        usage=outcome.usage,
    )


# ---- streaming --------------------------------------------------------------------------------


class _ChunkMaker:
    def __init__(self, response_id: str, created: int, model: str, include_usage: bool) -> None:
        self.base = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self.include_usage = include_usage

    def delta(self, delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        body = {**self.base, "choices": [choice]}
        if self.include_usage:
            body["usage"] = None  # OpenAI: null on every chunk but the last
        return sse(body)

    def usage(self, usage: Usage) -> bytes:
        return sse({**self.base, "choices": [], "usage": usage.model_dump()})


class _ChatStream:
    """The SSE body of one streamed reply."""

    def __init__(
        self,
        plan: ChatPlan,
        outcome: Outcome,
        memory: ChatMemory,
        transcribe: _Transcriber,
        chunks: _ChunkMaker,
    ) -> None:
        self.plan = plan
        self.outcome = outcome
        self.memory = memory
        self.transcribe = transcribe
        self.chunks = chunks
        self.encoder = (
            StreamEncoder(plan.encoder_format, OUTPUT_SAMPLE_RATE) if plan.speech else None
        )

    async def body(
        self, first: str | bytes | None, events: AsyncIterator[str | bytes]
    ) -> AsyncIterator[bytes]:
        yield self.chunks.delta({"role": "assistant", "content": None if self.plan.speech else ""})
        # aclosing: a client that goes away closes this stream, which must end the generation.
        async with contextlib.aclosing(events):
            try:
                async for piece in _chained(first, events):
                    chunk = self._piece(piece)
                    if chunk:
                        yield chunk
                async for chunk in self._ending():
                    yield chunk
            except APIError as error:
                kind = error_type(error.status)
                yield sse(error_body(error.message, kind=kind, param=error.param, code=error.code))
            except Exception:  # the 200 is sent already: report in the stream, do not cut it
                log.exception("chat completion stream failed")
                kind = error_type(500)
                yield sse(error_body("internal error while generating the reply", kind=kind))
        yield SSE_DONE

    def _piece(self, piece: str | bytes) -> bytes | None:
        if isinstance(piece, str):
            return self.chunks.delta({"content": piece})
        if self.encoder is None:
            return None
        return self._audio(self.encoder.write(pcm16_to_float(piece)))

    def _audio(self, data: bytes) -> bytes | None:
        if not data:
            return None
        return self.chunks.delta({"audio": {"data": _b64(data)}})

    async def _ending(self) -> AsyncIterator[bytes]:
        if self.encoder is not None:
            tail = self._audio(self.encoder.close())
            if tail:
                yield tail
            transcript = self.transcribe(self.outcome.tokens)
            async with contextlib.aclosing(transcript):
                async for delta in transcript:
                    yield self.chunks.delta({"audio": {"transcript": delta}})
            # The id holds the reply's speech (chat/memory.py), so it exists only now, at the end.
            audio_id, expires = self.memory.seal_audio(self.plan.model, self.outcome.tokens)
            yield self.chunks.delta({"audio": {"id": audio_id, "expires_at": expires}})
        yield self.chunks.delta({}, self.outcome.finish_reason)
        if self.chunks.include_usage:
            yield self.chunks.usage(self.outcome.usage)


async def _chained(
    first: str | bytes | None, rest: AsyncIterator[str | bytes]
) -> AsyncIterator[str | bytes]:
    if first is None:
        return
    yield first
    async for piece in rest:
        yield piece


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
