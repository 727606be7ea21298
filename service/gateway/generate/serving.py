"""POST /v1/generate: prompt from interleaved inputs, generation, typed segments (or SSE)."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from service.audio.decode import DecodedAudio
from service.audio.encode import check_output_format
from service.gateway.engine import (
    AudioOut,
    Finished,
    SegmentStart,
    SpeechTokensOut,
    TextOut,
    usage_dict,
)
from service.gateway.errors import APIError
from service.gateway.generate.collect import collect
from service.gateway.generate.protocol import (
    GenerateRequest,
    GenerateResponse,
    SpeechSegmentOut,
    TextSegmentOut,
)
from service.gateway.sampling import parse_stops
from service.gateway.sse import SSE_DONE, SSE_HEADERS, sse
from service.gateway.state import GatewayState
from service.gateway.tasks import check_prompt_chars, refuse_control_tokens
from service.gateway.timings import Timings
from service.gateway.uploads import AudioBudget, b64decode_field
from service.gateway.voices import model_voices
from service.lm.ending import Ending
from service.lm.generation import GenerationResult
from service.lm.prompt import PromptInput, SpeechInput, TextInput, build_prompt, explicit_prompt
from service.lm.tokenizer import SpiritTokenizer
from service.units.tokens import SPEECH_TOKEN, TOKEN_PREFIXES

ROUTE = "/v1/generate"


async def prompt_for(request: GenerateRequest, state: GatewayState, model: str) -> str:
    if request.prompt is not None:
        return explicit_prompt(request.prompt, request.output_modality)
    # Every audio input is checked (alone and all together, AudioBudget) before any is encoded.
    budget = AudioBudget(state.settings)
    audio: dict[int, DecodedAudio] = {}
    for index, item in enumerate(request.inputs):
        if item.type != "text" and item.tokens is None:
            param = f"inputs[{index}].audio"
            audio[index] = await budget.decode(b64decode_field(item.audio or "", param), param)
    parts: list[PromptInput] = []
    tokenizer = state.engine.tokenizer(model)
    for index, item in enumerate(request.inputs):
        if item.type == "text":
            text = item.text or ""
            # Text is text; markers and tokens may be written in the raw `prompt`.
            refuse_control_tokens(text, f"inputs[{index}].text", tokenizer.special_strings)
            parts.append(TextInput(text))
        elif item.tokens is not None:
            parts.append(SpeechInput(_speech_tokens(item.tokens, tokenizer, index)))
        else:
            encoded = await state.engine.encode(audio[index], model)
            parts.append(SpeechInput(encoded.tokens))
    return build_prompt(parts, request.output_modality)


_TOKENS_ONLY = re.compile(f"(?:{SPEECH_TOKEN.pattern})+")
_STREAMS = {prefix: kind for kind, prefix in TOKEN_PREFIXES.items()}


def _speech_tokens(tokens: str, tokenizer: SpiritTokenizer, index: int) -> str:
    """A speech input's token string: speech tokens only, each one of this model's units."""
    param = f"inputs[{index}].tokens"
    if not _TOKENS_ONLY.fullmatch(tokens):
        raise APIError(
            400,
            f"{param} must hold only speech tokens like [Hu12], nothing between them",
            param=param,
        )
    counts: dict[str, int] = {}
    for match in SPEECH_TOKEN.finditer(tokens):
        prefix, digits = match.group(1), match.group(2)
        count = counts.get(prefix)
        if count is None:
            count = counts[prefix] = len(tokenizer.unit_ids(_STREAMS[prefix]))
        if len(digits) > 9 or int(digits) >= count:
            raise APIError(
                400,
                f"{param}: {match.group(0)[:24]} is not a unit of this model "
                f"({count} {_STREAMS[prefix]} units)",
                param=param,
            )
    return tokens


def summary(finished: Finished, model: str, request_id: str, created: int) -> dict:
    prepared, result = finished.prepared, finished.result
    return {
        "id": request_id,
        "created": created,
        "model": model,
        "prompt": prepared.prompt,
        "prompt_token_ids": prepared.prompt_ids,
        "output_token_ids": result.output_ids,
        "finish_reason": result.finish_reason,
        "end": result.end,
        "dropped": finished.dropped,
        "usage": usage_dict(result.usage),
    }


async def generate(
    request: GenerateRequest, state: GatewayState, *, affinity: str | None = None
) -> GenerateResponse | StreamingResponse:
    engine = state.engine
    model = engine.resolve_model(request.model)
    max_tokens = engine.check_max_tokens(request.max_tokens)
    if request.audio:
        # Streamed audio goes out as pcm16 deltas; response_format shapes the collected files.
        check_output_format(
            "pcm" if request.stream else request.response_format, request.sample_rate
        )
    speakers = {voice.speaker for voice in model_voices(engine.layout, model)}
    if request.speaker not in speakers:  # refused before any work, streamed or not
        raise APIError(
            400,
            f"speaker {request.speaker} is not a speaker of {model} (0..{max(speakers)})",
            param="speaker",
        )
    stops = parse_stops(request.stop)
    check_prompt_chars(
        request.text_chars(),
        "prompt" if request.prompt is not None else "inputs",
        state.settings.max_prompt_chars,
    )
    prompt = await prompt_for(request, state, model)
    prepared = await engine.prepare(prompt, request.output_modality, model)
    if request.end_of_turn:
        ending = await state.tasks.spoken_turn_end(model, stops)
    else:
        ending = Ending(stops=stops)
    result = GenerationResult()
    outputs = engine.run(
        prepared,
        request.sampling(max_tokens),
        model,
        speaker=request.speaker,
        sample_rate=request.sample_rate,
        synthesize=request.audio,
        affinity=affinity,
        result=result,
        ending=ending,
    )
    request_id = f"gen-{uuid.uuid4().hex}"
    created = int(time.time())
    timings = Timings(state.metrics, ROUTE, request.sample_rate)
    if request.stream:
        return StreamingResponse(
            _sse_events(outputs, timings, model, request_id, created, request.sample_rate),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    collected = await collect(outputs, timings)
    segments: list[TextSegmentOut | SpeechSegmentOut] = []
    for segment in collected.segments:
        if segment.kind == "text":
            segments.append(TextSegmentOut(text=segment.text))
            continue
        if not request.audio:
            segments.append(
                SpeechSegmentOut(
                    tokens=segment.tokens, audio=None, format=None, sample_rate=None, seconds=None
                )
            )
            continue
        # Encoding is request-sized CPU work: off the event loop.
        audio = await asyncio.to_thread(
            segment.encoded_audio, request.response_format, request.sample_rate
        )
        segments.append(
            SpeechSegmentOut(
                tokens=segment.tokens,
                audio=base64.b64encode(audio).decode(),
                format=request.response_format,
                sample_rate=request.sample_rate,
                seconds=round(len(segment.pcm) / 2 / request.sample_rate, 3),
            )
        )
    return GenerateResponse(
        **summary(collected.finished, model, request_id, created), segments=segments
    )


async def _sse_events(
    outputs,
    timings: Timings,
    model: str,
    request_id: str,
    created: int,
    sample_rate: int,  # noqa: ANN001
) -> AsyncIterator[bytes]:
    try:
        async for item in outputs:
            timings.observe(item)
            if isinstance(item, SegmentStart):
                yield sse({"type": "segment.start", "index": item.index, "kind": item.kind})
            elif isinstance(item, TextOut):
                yield sse({"type": "text.delta", "index": item.index, "delta": item.text})
            elif isinstance(item, SpeechTokensOut):
                yield sse({"type": "speech.tokens", "index": item.index, "tokens": item.tokens})
            elif isinstance(item, AudioOut):
                audio = base64.b64encode(item.pcm16).decode()
                yield sse(
                    {
                        "type": "audio.delta",
                        "index": item.index,
                        "audio": audio,
                        "format": "pcm16",
                        "sample_rate": sample_rate,
                    }
                )
            elif isinstance(item, Finished):
                yield sse({"type": "done", **summary(item, model, request_id, created)})
    except APIError as error:
        yield sse({"type": "error", "error": {"message": error.message, "code": error.status}})
    timings.finish()
    yield SSE_DONE
