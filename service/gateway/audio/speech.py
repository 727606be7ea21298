"""POST /v1/audio/speech: Spirit LM text-to-speech with a few-shot prompt, streamed.

Text -> the shared TTS prompt (service/gateway/tasks.py) -> SPEECH generation, ended like every
spoken turn (at a line end or at silence after speech, service/lm/ending.py) -> streaming
vocoder on a speech worker -> encoder. Audio goes out as it is made: chunked bytes of one
growing file for ``stream_format=audio``, or SSE ``speech.audio.delta`` events (base64 pieces of
that same file) and ``speech.audio.done`` (with usage and, our addition, ``finish_reason``).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi.responses import StreamingResponse

from service.audio.encode import StreamEncoder, check_output_format
from service.audio.pcm import pcm16_to_float
from service.checkpoints.layout import EXPRESSIVE
from service.errors import error_body
from service.gateway.audio.primed import Primed
from service.gateway.audio.protocol import SpeechRequest, VoiceRef
from service.gateway.engine import AudioOut, Engine, Finished
from service.gateway.errors import APIError, error_type
from service.gateway.refusals import refuse_unknown
from service.gateway.sse import SSE_HEADERS, sse
from service.gateway.state import GatewayState
from service.gateway.tasks import check_text, tts_budget
from service.gateway.timings import Timings
from service.gateway.voices import model_voices, resolve_voice
from service.lm.generation import GenerationResult

log = logging.getLogger("spiritlm.gateway.audio")

ROUTE = "/v1/audio/speech"


async def speak(request: SpeechRequest, state: GatewayState) -> StreamingResponse:
    engine = state.engine
    _check_options(request)
    model = engine.served_model(request.model)
    text = check_text(request.input, "input", state.settings.max_input_chars)
    if not text:
        raise APIError(400, "input is empty", param="input")
    voice = request.voice.id if isinstance(request.voice, VoiceRef) else request.voice
    speaker = resolve_voice(model_voices(engine.layout, model), voice, model)
    style = _style_token(engine, model, request.style)
    encoder = StreamEncoder(request.response_format, request.sample_rate)
    max_tokens = engine.max_tokens_or(request.max_tokens, tts_budget(text, model))
    prepared = await state.tasks.tts_prompt(model, text, request.style)
    result = GenerationResult()
    outputs = engine.run(
        prepared,
        request.sampling(max_tokens),
        model,
        speaker=speaker,
        sample_rate=request.sample_rate,
        result=result,
        speech_prefix=style,
        ending=await state.tasks.spoken_turn_end(model),
    )
    primed = Primed(outputs, lambda item: isinstance(item, AudioOut))
    await primed.start()
    timings = Timings(state.metrics, ROUTE, request.sample_rate)
    headers = {"X-Sample-Rate": str(request.sample_rate)}
    if request.stream_format == "sse":
        body = _sse_events(primed, encoder, timings, len(prepared.prompt_ids), result)
        return StreamingResponse(
            body, media_type="text/event-stream", headers={**SSE_HEADERS, **headers}
        )
    return StreamingResponse(
        _audio_bytes(primed, encoder, timings), media_type=encoder.media_type, headers=headers
    )


def _check_options(request: SpeechRequest) -> None:
    """Refuse, by name, what this route does not honour (docs/audio-api.md)."""
    refuse_unknown(request)
    if request.speed != 1.0:
        raise APIError(
            400,
            f"speed {request.speed!r} is not supported: Spirit LM sets the speaking rate itself; "
            "use 1.0",
            param="speed",
        )
    if request.instructions:
        raise APIError(
            400, "instructions are not supported by Spirit LM voices", param="instructions"
        )
    check_output_format(request.response_format, request.sample_rate)


def _style_token(engine: Engine, model: str, style: int | None) -> tuple[str, ...]:
    if style is None:
        return ()
    if model != EXPRESSIVE:
        raise APIError(400, f"style needs {EXPRESSIVE}; {model} has no style tokens", param="style")
    count = len(engine.tokenizer(model).unit_ids("style"))
    if style >= count:
        raise APIError(
            400, f"style {style} is out of range: valid styles are 0..{count - 1}", param="style"
        )
    return (f"[St{style}]",)


async def _encoded_chunks(
    primed: Primed, encoder: StreamEncoder, timings: Timings
) -> AsyncIterator[bytes]:
    """Encoded audio as it comes; the encoder's tail once the generation is over."""
    async with aclosing(primed.items()) as items:
        async for item in items:
            timings.observe(item)
            if isinstance(item, AudioOut):
                chunk = encoder.write(pcm16_to_float(item.pcm16))
                if chunk:
                    yield chunk
            elif isinstance(item, Finished):
                break
    tail = encoder.close()
    timings.finish()
    if tail:
        yield tail


async def _audio_bytes(
    primed: Primed, encoder: StreamEncoder, timings: Timings
) -> AsyncIterator[bytes]:
    try:
        async for chunk in _encoded_chunks(primed, encoder, timings):
            yield chunk
    except APIError as error:
        # The status line is gone; ending the body early is all that is left to do.
        log.warning("speech stream ended early: %s", error.message)


async def _sse_events(
    primed: Primed,
    encoder: StreamEncoder,
    timings: Timings,
    prompt_tokens: int,
    result: GenerationResult,
) -> AsyncIterator[bytes]:
    try:
        async for chunk in _encoded_chunks(primed, encoder, timings):
            audio = base64.b64encode(chunk).decode()
            yield sse({"type": "speech.audio.delta", "audio": audio})
    except APIError as error:
        body = error_body(error.message, kind=error_type(error.status), param=error.param)
        yield sse({"type": "error", **body})
        return
    output_tokens = len(result.output_ids)
    usage = {
        "input_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "total_tokens": prompt_tokens + output_tokens,
    }
    yield sse({"type": "speech.audio.done", "usage": usage, "finish_reason": result.finish_reason})
