"""POST /v1/audio/transcriptions: Spirit LM speech recognition with a few-shot prompt.

Audio -> speech worker units -> the shared ASR prompt (service/gateway/tasks.py) -> TEXT
generation, which ends at the first line end (service/lm/ending.py).

Token log-probabilities (`include[]=logprobs`, and `verbose_json`'s `avg_logprob`) are vLLM's
own for the generated tokens (service/lm/client.py, `SamplingParams.logprobs`); the line end
that ends the transcript is not part of it, so neither of them counts it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from service.errors import error_body
from service.gateway.audio.primed import Primed
from service.gateway.audio.protocol import TRANSCRIPTION_NOT_SUPPORTED, TranscriptionForm
from service.gateway.engine import Finished, TextOut
from service.gateway.errors import APIError, error_type
from service.gateway.refusals import refuse, refuse_unknown
from service.gateway.sse import SSE_HEADERS, sse
from service.gateway.state import GatewayState
from service.gateway.tasks import asr_budget, check_text
from service.gateway.timings import Timings
from service.gateway.uploads import decode_upload, read_upload
from service.lm.client import SamplingParams
from service.lm.ending import ONE_LINE, line_end_ids
from service.lm.generation import GenerationResult, PreparedPrompt
from service.lm.tokenizer import SPACE, SpiritTokenizer

ROUTE = "/v1/audio/transcriptions"
LANGUAGE = "english"  # Spirit LM is trained on English speech
# `language` values that ask for what Spirit LM does: ISO-639-1 "en" (any region), or the name.
ENGLISH = re.compile(r"(?i)en([-_][a-z]{2})?|english")
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's byte-fallback pieces


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
    tokenizer: SpiritTokenizer
    logprobs: bool = False  # include[]=logprobs: token logprobs in the response

    def token_logprobs(self, start: int = 0, end: int | None = None) -> list[dict]:
        """OpenAI's `{token, logprob, bytes}` for the transcript's output ids in [start, end)."""
        ids = self.result.output_ids[start:end]
        values = self.result.logprobs[start:end]
        return [
            token_logprob(self.tokenizer, token_id, value)
            for token_id, value in zip(ids, values, strict=True)
            if token_id not in self.stop_ids
        ]


async def transcribe(form: TranscriptionForm, state: GatewayState) -> Response:
    check_options(form)
    job = await start(form, state)
    if form.stream:
        return StreamingResponse(
            _events(job, state), media_type="text/event-stream", headers=SSE_HEADERS
        )
    text = await _collect(job, state)
    return render(form, job, text)


def check_options(form: TranscriptionForm) -> None:
    """Refuse, by name, what this route does not honour (docs/audio-api.md), before any work."""
    refuse_unknown(form, TRANSCRIPTION_NOT_SUPPORTED)
    if form.stream and form.response_format not in ("json", "text"):
        raise APIError(
            400,
            f"stream=true supports response_format json or text, not {form.response_format}",
            param="response_format",
        )
    if form.language is not None and not ENGLISH.fullmatch(form.language.strip()):
        raise refuse("language", f"Spirit LM transcribes English only, not {form.language!r}")
    for item in form.include:
        if item != "logprobs":
            raise refuse("include", f"{item!r} is not available; only 'logprobs' is")
    if form.include and form.response_format != "json":
        raise refuse("include", "logprobs come with response_format json only")


async def start(form: TranscriptionForm, state: GatewayState) -> Job:
    engine = state.engine
    model = engine.served_model(form.model)
    context = None
    if form.prompt:
        context = check_text(form.prompt, "prompt", state.settings.max_input_chars) or None
    if form.max_tokens is not None:
        engine.check_max_tokens(form.max_tokens)
    data = await read_upload(form.file)
    audio = await decode_upload(data, state.settings, form.file.filename)
    seconds = audio.seconds
    encoded = await engine.encode(audio, model)
    prepared = await state.tasks.asr_prompt(model, encoded.tokens, context)
    params = SamplingParams(
        max_tokens=engine.max_tokens_or(form.max_tokens, asr_budget(encoded.tokens)),
        temperature=form.temperature,
        seed=form.seed,
        logprobs=bool(form.include) or form.response_format == "verbose_json",
    )
    result = GenerationResult()
    outputs = engine.run(prepared, params, model, synthesize=False, result=result, ending=ONE_LINE)
    primed = Primed(outputs, lambda item: isinstance(item, TextOut))
    await primed.start()
    tokenizer = engine.tokenizer(model)
    audio_tokens = sum(1 for i in prepared.prompt_ids if tokenizer.unit_of(i) is not None)
    stop_ids = line_end_ids(tokenizer)
    return Job(
        model,
        seconds,
        prepared,
        result,
        primed,
        form.temperature,
        audio_tokens,
        stop_ids,
        tokenizer,
        logprobs=bool(form.include),
    )


def token_logprob(tokenizer: SpiritTokenizer, token_id: int, logprob: float) -> dict:
    """One token as OpenAI's logprobs list has it: its text, logprob and UTF-8 bytes."""
    piece = tokenizer.token_string(token_id)
    byte = BYTE_PIECE.fullmatch(piece)
    data = bytes([int(byte.group(1), 16)]) if byte else piece.replace(SPACE, " ").encode()
    return {
        "token": data.decode(errors="replace"),
        "logprob": logprob,
        "bytes": list(data),
    }


async def _texts(job: Job, state: GatewayState) -> AsyncIterator[TextOut]:
    """Text deltas of the answer; leaving early closes the generation."""
    timings = Timings(state.metrics, ROUTE, 16000)
    async with aclosing(job.outputs.items()) as items:
        async for item in items:
            timings.observe(item)
            if isinstance(item, TextOut) and item.text:
                yield item
            elif isinstance(item, Finished):
                break
    timings.finish()


async def _collect(job: Job, state: GatewayState) -> str:
    parts = [delta.text async for delta in _texts(job, state)]
    return "".join(parts).strip()


async def _events(job: Job, state: GatewayState) -> AsyncIterator[bytes]:
    parts: list[str] = []
    done = 0  # output ids whose logprobs went out
    try:
        async for delta in _texts(job, state):
            parts.append(delta.text)
            event = {"type": "transcript.text.delta", "delta": delta.text}
            if job.logprobs:
                event["logprobs"] = job.token_logprobs(done, delta.output_tokens)
                done = delta.output_tokens
            yield sse(event)
    except APIError as error:
        body = error_body(error.message, kind=error_type(error.status), param=error.param)
        yield sse({"type": "error", **body})
        return
    text = "".join(parts).strip()
    event = {"type": "transcript.text.done", "text": text}
    if job.logprobs:
        event["logprobs"] = job.token_logprobs()
    yield sse({**event, "usage": token_usage(job)})


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
        logprobs = {"logprobs": job.token_logprobs()} if job.logprobs else {}
        return JSONResponse({"text": text, **logprobs, "usage": token_usage(job)})
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt == "srt":
        return PlainTextResponse(srt(text, job.seconds))
    if fmt == "vtt":
        return PlainTextResponse(vtt(text, job.seconds), media_type="text/vtt")
    return JSONResponse(verbose(form, job, text))


def verbose(form: TranscriptionForm, job: Job, text: str) -> dict:
    """Whisper's verbose shape with one segment over the whole audio.

    `avg_logprob` is the mean of vLLM's logprobs of the segment's tokens (0.0 when there are
    none) and `compression_ratio` is computed as Whisper does. Whisper's `no_speech_prob` is
    left out: Spirit LM has no no-speech token to measure it with.
    """
    duration = round(job.seconds, 3)
    kept = [
        (token_id, logprob)
        for token_id, logprob in zip(job.result.output_ids, job.result.logprobs, strict=True)
        if token_id not in job.stop_ids
    ]
    tokens = [token_id for token_id, _ in kept]
    avg_logprob = sum(logprob for _, logprob in kept) / len(kept) if kept else 0.0
    segment = {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": duration,
        "text": text,
        "tokens": tokens,
        "temperature": job.temperature,
        "avg_logprob": avg_logprob,
        "compression_ratio": compression_ratio(text),
    }
    return {
        "task": "transcribe",
        "language": LANGUAGE,
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
