"""The speech worker's FastAPI app: encode audio to units, decode units to audio, stream synthesis.

Routes: GET /health, /ready, /metrics, /v1/models/{model}/silence; POST /v1/encode, /v1/decode;
WS /v1/stream (see `stream_route`). With `internal_api_key` set, all but the first three need it
(service/internal_auth.py). Models load in a background thread at start-up (learning each
model's silence units there too), so /health answers at once and /ready turns 200 when they are
loaded. Model work runs in worker threads bounded by `inference_threads`, keeping the event loop
free for other requests and streams.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.audio.decode import (
    F32LE_MEDIA_TYPE,
    TARGET_RATE,
    AudioLimits,
    AudioTooLong,
    check_f32le_size,
    decode_audio,
    decode_f32le,
)
from service.audio.encode import (
    MEDIA_TYPES,
    available_formats,
    check_sample_rate,
    encode_audio,
)
from service.config import Settings
from service.errors import AudioError, UnitFormatError, error_body
from service.internal_auth import SPEECH_WORKER_OPEN_PATHS, InternalAuthMiddleware
from service.speech.pipeline import SpeechStack
from service.speech_worker.disconnect import unless_disconnected
from service.speech_worker.metrics import METRICS_MEDIA_TYPE, RequestMetrics
from service.speech_worker.models import SpeechModels
from service.speech_worker.priority import Priority
from service.speech_worker.protocol import (
    DecodeRequest,
    EncodeResult,
    SilenceUnits,
    WorkerRequestError,
    units_over_limit,
)
from service.speech_worker.session import check_speaker
from service.speech_worker.settings import SpeechWorkerSettings
from service.speech_worker.state import WorkerState
from service.speech_worker.stream_route import stream_endpoint
from service.units.tokens import SPEECH_TOKEN, Units, string_to_units, units_to_string
from service.units.windows import check_keep_ms, keep_units

log = logging.getLogger("spiritlm.speech_worker")

LoadFailure = Callable[[str], None]
T = TypeVar("T")


def create_app(
    settings: Settings | None = None, *, on_load_failure: LoadFailure | None = None
) -> FastAPI:
    """The worker app. `on_load_failure` is told when the models cannot be loaded."""
    worker_settings = _worker_settings(settings)
    state = WorkerState(settings=worker_settings, models=SpeechModels(worker_settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load(state, on_load_failure))
        yield
        loader.cancel()

    app = FastAPI(title="spiritlm-serve speech worker", lifespan=lifespan)
    app.state.worker = state
    api_key = worker_settings.internal_api_key.get_secret_value()
    if api_key:
        app.add_middleware(
            InternalAuthMiddleware, api_key=api_key, open_paths=SPEECH_WORKER_OPEN_PATHS
        )
    # Outermost: refusals for want of the credential are counted too.
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    _add_error_handlers(app)
    _add_status_routes(app, state)
    _add_speech_routes(app, state)
    app.add_api_websocket_route("/v1/stream", stream_endpoint)
    return app


def _worker_settings(settings: Settings | None) -> SpeechWorkerSettings:
    if settings is None:
        return SpeechWorkerSettings()
    if isinstance(settings, SpeechWorkerSettings):
        return settings
    return SpeechWorkerSettings(**settings.model_dump())


async def _load(state: WorkerState, on_failure: LoadFailure | None) -> None:
    try:
        # Abandoned on shutdown: a half-finished load must not hold the process open.
        await anyio.to_thread.run_sync(state.models.load, abandon_on_cancel=True)
    except Exception:
        if on_failure is not None:
            on_failure(state.models.status())


# ---- errors


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(WorkerRequestError)
    async def request_error(request: Request, error: WorkerRequestError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(error.errors()), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        body = error_body(str(error.detail), code=str(error.status_code))
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        body = error_body("internal error in the speech worker", kind="server_error")
        return JSONResponse(body, status_code=500)


def validation_body(errors: list[dict]) -> dict:
    """The first pydantic error as an OpenAI error naming the field (e.g. `units.hubert`)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return error_body(message, param=param, code="invalid_value")


# ---- status


def _add_status_routes(app: FastAPI, state: WorkerState) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        if state.models.failure:
            return JSONResponse(
                error_body(state.models.failure, kind="server_error", code="load_failed"), 503
            )
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        models = state.models
        if not models.ready:
            body = error_body(
                f"speech worker not ready: {models.status()}", kind="server_error", code="not_ready"
            )
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready", "models": models.names, "device": models.device})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=METRICS_MEDIA_TYPE)


# ---- encode / decode


def _add_speech_routes(app: FastAPI, state: WorkerState) -> None:
    formats = available_formats()
    # Shows where the decoding happened: `file` bodies are decoded here, `f32le` ones were
    # decoded by the caller (the gateway decodes each upload once, service/gateway/uploads.py).
    inputs = Counter(
        "spiritlm_speech_encode_inputs",
        "Encoded inputs by model, kind: file (decoded by this worker) or f32le (raw 16 kHz "
        "float32 samples, decoded by the caller), and the encoders' precision (encoder_dtype, "
        "or realtime_encoder_dtype for realtime conversations' turns).",
        ["model", "kind", "encoders"],
        registry=state.metrics.registry,
    )

    @app.post("/v1/encode", response_model=EncodeResult)
    async def encode(
        request: Request,
        model: str | None = None,
        keep_from_ms: int | None = None,
        keep_to_ms: int | None = None,
        ahead: bool = Query(
            False,
            description="nobody waits for the result yet (a window of a realtime turn still "
            "being spoken): let in after model work that someone does wait for",
        ),
        realtime: bool = Query(
            False,
            description="a realtime conversation's turn: encoded in `realtime_encoder_dtype`",
        ),
    ) -> EncodeResult:
        stack = state.models.get(model, realtime=realtime)
        keep = _kept_stretch(keep_from_ms, keep_to_ms, stack)
        raw = is_f32le(request.headers.get("content-type", ""))
        limits = AudioLimits(
            max_seconds=state.settings.max_audio_seconds,
            max_bytes=state.settings.speech_max_body_bytes,
        )
        declared = request.headers.get("content-length", "")
        if raw and declared.isdigit():
            # Bounded in samples before the body is read (64000 bytes per second of audio).
            _check_audio(check_f32le_size, int(declared), limits)
        data = await read_body(request, state.settings.speech_max_body_bytes)
        started = time.perf_counter()
        decode = partial(decode_f32le if raw else decode_audio, limits=limits)
        priority = Priority.AHEAD if ahead else Priority.WAITED
        work = state.run(_encode, stack, decode, data, keep, priority=priority, preemptible=True)
        units, seconds = await unless_disconnected(request, work)
        elapsed = time.perf_counter() - started
        inputs.labels(stack.variant, "f32le" if raw else "file", stack.encoder_dtype).inc()
        state.metrics.encode_seconds.labels(stack.variant).observe(elapsed)
        state.metrics.observe_compute(stack.variant, "encode", elapsed, seconds)
        return EncodeResult(
            model=stack.variant,
            units=units.to_dict(),
            tokens=units_to_string(units, expressive=stack.expressive),
            seconds=seconds,
        )

    @app.get("/v1/models/{model}/silence", response_model=SilenceUnits)
    async def silence(model: str) -> SilenceUnits:
        state.models.get(model)  # 404 for a model not served, 503 while loading
        return SilenceUnits(model=model, silence_units=state.models.silence[model])

    @app.post("/v1/decode")
    async def decode(body: DecodeRequest) -> Response:
        stack = state.models.get(body.model)
        check_decode_units(body, state.settings.max_detokenize_units)
        units, field = request_units(body, state.settings.max_tokens)
        check_streams(stack.expressive, units, field)
        check_speaker(stack, body.speaker)
        check_output(body.format, body.sample_rate, formats)
        started = time.perf_counter()
        wav = await state.run(_synthesize, stack, units, body, field, preemptible=True)
        elapsed = time.perf_counter() - started
        seconds = len(wav) / stack.sample_rate
        state.metrics.decode_seconds.labels(stack.variant, "oneshot").observe(elapsed)
        state.metrics.observe_compute(stack.variant, "decode", elapsed, seconds)
        audio = await state.run(_encode_output, wav, stack.sample_rate, body)
        headers = {"X-Sample-Rate": str(body.sample_rate), "X-Audio-Seconds": f"{seconds:.4f}"}
        return Response(audio, media_type=MEDIA_TYPES[body.format], headers=headers)


async def read_body(request: Request, limit: int) -> bytearray:
    """The raw body, refused with 413 as soon as it passes `limit` bytes.

    A bytearray: raw samples are then used in place, as a writable array (`decode_f32le`).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WorkerRequestError(400, "invalid Content-Length header", code="invalid_body")
        if int(declared) > limit:
            raise _too_large(limit)
    body = bytearray()
    async for part in request.stream():
        if len(body) + len(part) > limit:
            raise _too_large(limit)
        body += part
    return body


def _too_large(limit: int) -> WorkerRequestError:
    return WorkerRequestError(
        413, f"request body exceeds {limit} bytes", param="file", code="body_too_large"
    )


def is_f32le(content_type: str) -> bool:
    """Whether a body is raw samples (F32LE_MEDIA_TYPE); 400 unless its rate is 16 kHz.

    Any other Content-Type is an audio file, decoded here (service/audio/decode.py).
    """
    kind, _, parameters = content_type.partition(";")
    if kind.strip().lower() != F32LE_MEDIA_TYPE:
        return False
    pairs = (parameter.partition("=") for parameter in parameters.split(";"))
    rates = [value.strip() for key, _, value in pairs if key.strip().lower() == "rate"]
    if rates != [str(TARGET_RATE)]:
        raise WorkerRequestError(
            400,
            f"Content-Type {F32LE_MEDIA_TYPE} must say rate={TARGET_RATE} (16 kHz mono float32 "
            f"samples), got {content_type!r}",
            param="Content-Type",
            code="invalid_value",
        )
    return True


def _check_audio(check: Callable[..., T], *args: object) -> T:
    """`check(*args)`, its AudioError as a 400 naming the file and, when too long, the limit."""
    try:
        return check(*args)
    except AudioTooLong as error:
        raise WorkerRequestError(
            400, f"{error} (max_audio_seconds)", param="file", code="audio_too_long"
        ) from None
    except AudioError as error:
        raise WorkerRequestError(400, str(error), param="file", code="invalid_audio") from None


def _kept_stretch(
    keep_from_ms: int | None, keep_to_ms: int | None, stack: SpeechStack
) -> tuple[int, int | None] | None:
    """`keep_from_ms`/`keep_to_ms`: only the units of that stretch of the input are returned (a
    window of a realtime turn, service/units/windows.py); both on the model's unit grid."""
    if keep_from_ms is None and keep_to_ms is None:
        return None
    if keep_from_ms is None:
        raise WorkerRequestError(400, "keep_to_ms needs keep_from_ms", code="invalid_value")
    problem = check_keep_ms(keep_from_ms, keep_to_ms, stack.expressive)
    if problem is not None:
        raise WorkerRequestError(400, problem, code="invalid_value")
    return keep_from_ms, keep_to_ms


def _encode(
    stack: SpeechStack,
    decode: Callable[[bytearray], np.ndarray],
    data: bytearray,
    keep: tuple[int, int | None] | None,
) -> tuple[Units, float]:
    """Decode, check the kept stretch against the signal's length, then run the model."""
    wav = _check_audio(decode, data)
    seconds = len(wav) / stack.sample_rate
    if keep is None:
        return stack.encode_units(wav), seconds
    keep_from_ms, keep_to_ms = keep
    last_ms = keep_from_ms if keep_to_ms is None else keep_to_ms
    if last_ms >= seconds * 1000:
        raise WorkerRequestError(
            400,
            f"the kept stretch ends at {last_ms} ms, but the audio is {seconds * 1000:.0f} ms long",
            param="keep_to_ms" if keep_to_ms is not None else "keep_from_ms",
            code="invalid_value",
        )
    return keep_units(stack.encode_units(wav), keep_from_ms, keep_to_ms), seconds


def check_decode_units(body: DecodeRequest, limit: int) -> None:
    over = units_over_limit(body.tokens, body.units, limit)
    if over is not None:
        field, message = over
        raise WorkerRequestError(400, message, param=field, code="too_many_units")


def request_units(body: DecodeRequest, max_tokens: int) -> tuple[Units, str]:
    """The units of a decode request and the field they came from."""
    if (body.tokens is None) == (body.units is None):
        raise WorkerRequestError(
            422, "give exactly one of 'tokens' and 'units'", param="tokens", code="invalid_value"
        )
    rng = None if body.seed is None else random.Random(body.seed)
    field = "tokens" if body.tokens is not None else "units"
    try:
        if body.tokens is not None:
            count = sum(1 for _ in SPEECH_TOKEN.finditer(body.tokens))
            _check_count(count, max_tokens, field)
            units = string_to_units(body.tokens, rng=rng, strict=True)
        else:
            units = body.units.to_units()  # type: ignore[union-attr]
            _check_count(len(units.hubert), max_tokens, field)
    except UnitFormatError as error:
        raise WorkerRequestError(400, str(error), param=field, code="invalid_units") from None
    if all(unit < 0 for unit in units.hubert):  # negative values mean "no unit"
        raise WorkerRequestError(
            400,
            f"{field}: no HuBERT units ([Hu<n>] tokens, values from 0) to decode",
            param=field,
            code="invalid_units",
        )
    return units, field


def check_streams(expressive: bool, units: Units, field: str) -> None:
    """Pitch and style units only mean something to the expressive vocoder; the base one would
    drop them, so they are refused rather than ignored."""
    if not expressive and (units.pitch or units.style):
        raise WorkerRequestError(
            400,
            f"{field}: pitch and style units ([Pi<n>], [St<n>]) need the expressive model; the "
            "base model's vocoder takes HuBERT units only",
            param=field,
            code="invalid_units",
        )


def _check_count(count: int, limit: int, field: str) -> None:
    if count > limit:
        raise WorkerRequestError(
            400,
            f"{field}: {count} speech tokens exceed the limit of {limit}",
            param=field,
            code="too_many_tokens",
        )


def check_output(fmt: str, sample_rate: int, formats: tuple[str, ...]) -> None:
    if fmt not in formats:
        raise WorkerRequestError(
            400,
            f"format '{fmt}' is not available: this worker's FFmpeg lacks its encoder",
            param="format",
            code="invalid_value",
        )
    try:
        check_sample_rate(sample_rate)
    except ValueError as error:
        raise WorkerRequestError(
            400, str(error), param="sample_rate", code="invalid_value"
        ) from None


def _synthesize(stack: SpeechStack, units: Units, body: DecodeRequest, field: str) -> np.ndarray:
    try:
        return stack.decode(units, speaker=body.speaker, dur_pred=body.duration_prediction)
    except (ValueError, UnitFormatError) as error:
        # The vocoder's checks (unit ranges, stream lengths) describe the problem in the input.
        raise WorkerRequestError(
            400, f"{field}: {error}", param=field, code="invalid_units"
        ) from None


def _encode_output(wav: np.ndarray, rate: int, body: DecodeRequest) -> bytes:
    try:
        return encode_audio(wav, rate, body.format, output_rate=body.sample_rate)
    except ValueError as error:
        # e.g. Opus only takes 8/12/16/24/48 kHz.
        raise WorkerRequestError(
            400, str(error), param="sample_rate", code="invalid_value"
        ) from None
