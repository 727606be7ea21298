"""POST /v1/audio/transcriptions: Spirit LM speech recognition with a few-shot prompt.

Audio -> speech worker units -> the shared ASR prompt (service/gateway/tasks.py) -> TEXT
generation, which ends at the first line end (service/lm/ending.py).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from service.errors import error_body
from service.gateway.audio.primed import Primed
from service.gateway.audio.protocol import TranscriptionForm
from service.gateway.engine import Finished, TextOut
from service.gateway.errors import APIError, error_type
from service.gateway.sse import SSE_HEADERS, sse
from service.gateway.state import GatewayState
from service.gateway.tasks import asr_budget, check_text
from service.gateway.timings import Timings
from service.gateway.uploads import check_audio, read_upload
from service.lm.client import SamplingParams
from service.lm.ending import ONE_LINE, line_end_ids
from service.lm.generation import GenerationResult, PreparedPrompt

ROUTE = "/v1/audio/transcriptions"
LANGUAGE = "english"  # Spirit LM is trained on English speech


@dataclass
class Job:
    model: str
    seconds: float
    prepared: PreparedPrompt
    result: GenerationResult
    outputs: Primed
    temperature: float
    audio_tokens: int
    stop_ids: tuple[int, ...]


async def transcribe(form: TranscriptionForm, state: GatewayState) -> Response:
    if form.stream and form.response_format not in ("json", "text"):
        raise APIError(
            400,
            f"stream=true supports response_format json or text, not {form.response_format}",
            param="response_format",
        )
    job = await start(form, state)
    if form.stream:
        return StreamingResponse(
            _events(job, state), media_type="text/event-stream", headers=SSE_HEADERS
        )
    text = await _collect(job, state)
    return render(form, job, text)


async def start(form: TranscriptionForm, state: GatewayState) -> Job:
    engine = state.engine
    model = engine.served_model(form.model)
    context = None
    if form.prompt:
        context = check_text(form.prompt, "prompt", state.settings.max_input_chars) or None
    if form.max_tokens is not None:
        engine.check_max_tokens(form.max_tokens)
    data = await read_upload(form.file)
    seconds = await check_audio(data, state.settings, form.file.filename)
    encoded = await engine.encode(data, model)
    prepared = await state.tasks.asr_prompt(model, encoded.tokens, context)
    params = SamplingParams(
        max_tokens=engine.max_tokens_or(form.max_tokens, asr_budget(encoded.tokens)),
        temperature=form.temperature,
        seed=form.seed,
    )
    result = GenerationResult()
    outputs = engine.run(prepared, params, model, synthesize=False, result=result, ending=ONE_LINE)
    primed = Primed(outputs, lambda item: isinstance(item, TextOut))
    await primed.start()
    tokenizer = engine.tokenizer(model)
    audio_tokens = sum(1 for i in prepared.prompt_ids if tokenizer.unit_of(i) is not None)
    stop_ids = line_end_ids(engine.tokenizer(model))
    return Job(model, seconds, prepared, result, primed, form.temperature, audio_tokens, stop_ids)


async def _texts(job: Job, state: GatewayState) -> AsyncIterator[str]:
    """Text deltas of the answer; leaving early closes the generation."""
    timings = Timings(state.metrics, ROUTE, 16000)
    async with aclosing(job.outputs.items()) as items:
        async for item in items:
            timings.observe(item)
            if isinstance(item, TextOut) and item.text:
                yield item.text
            elif isinstance(item, Finished):
                break
    timings.finish()


async def _collect(job: Job, state: GatewayState) -> str:
    parts = [delta async for delta in _texts(job, state)]
    return "".join(parts).strip()


async def _events(job: Job, state: GatewayState) -> AsyncIterator[bytes]:
    parts: list[str] = []
    try:
        async for delta in _texts(job, state):
            parts.append(delta)
            yield sse({"type": "transcript.text.delta", "delta": delta})
    except APIError as error:
        body = error_body(error.message, kind=error_type(error.status), param=error.param)
        yield sse({"type": "error", **body})
        return
    text = "".join(parts).strip()
    yield sse({"type": "transcript.text.done", "text": text, "usage": token_usage(job)})


def token_usage(job: Job) -> dict:
    prompt = len(job.prepared.prompt_ids)
    output = len(job.result.output_ids)
    return {
        "type": "tokens",
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output,
        "input_token_details": {
            "audio_tokens": job.audio_tokens,
            "text_tokens": prompt - job.audio_tokens,
        },
    }


def render(form: TranscriptionForm, job: Job, text: str) -> Response:
    fmt = form.response_format
    if fmt == "json":
        return JSONResponse({"text": text, "usage": token_usage(job)})
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt == "srt":
        return PlainTextResponse(srt(text, job.seconds))
    if fmt == "vtt":
        return PlainTextResponse(vtt(text, job.seconds), media_type="text/vtt")
    return JSONResponse(verbose(form, job, text))


def verbose(form: TranscriptionForm, job: Job, text: str) -> dict:
    """Whisper's verbose shape with one segment over the whole audio.

    Token log-probabilities are not requested from the LM, so `avg_logprob` and
    `no_speech_prob` are 0.0 placeholders; `compression_ratio` is computed as Whisper does.
    """
    duration = round(job.seconds, 3)
    tokens = [i for i in job.result.output_ids if i not in job.stop_ids]
    segment = {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": duration,
        "text": text,
        "tokens": tokens,
        "temperature": job.temperature,
        "avg_logprob": 0.0,
        "compression_ratio": compression_ratio(text),
        "no_speech_prob": 0.0,
    }
    return {
        "task": "transcribe",
        "language": form.language or LANGUAGE,
        "duration": duration,
        "text": text,
        "segments": [segment],
        "usage": {"type": "duration", "seconds": duration},
    }


def compression_ratio(text: str) -> float:
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


def timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(text: str, seconds: float) -> str:
    return f"1\n{timestamp(0, ',')} --> {timestamp(seconds, ',')}\n{text}\n\n"


def vtt(text: str, seconds: float) -> str:
    return f"WEBVTT\n\n{timestamp(0, '.')} --> {timestamp(seconds, '.')}\n{text}\n\n"
