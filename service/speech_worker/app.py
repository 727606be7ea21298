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

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.audio.decode import AudioLimits, decode_audio
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
from service.speech_worker.metrics import METRICS_MEDIA_TYPE, RequestMetrics
from service.speech_worker.models import SpeechModels
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

log = logging.getLogger("spiritlm.speech_worker")

LoadFailure = Callable[[str], None]


def create_app(
    settings: Settings | None = None, *, on_load_failure: LoadFailure | None = None
) -> FastAPI:
    """The worker app. `on_load_failure` is told when the models cannot be loaded."""
    worker_settings = _worker_settings(settings)
    state = WorkerState(settings=worker_settings, models=SpeechModels(worker_settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.limiter = anyio.CapacityLimiter(state.settings.inference_threads)
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

    @app.post("/v1/encode", response_model=EncodeResult)
    async def encode(request: Request, model: str | None = None) -> EncodeResult:
        stack = state.models.get(model)
        data = await read_body(request, state.settings.speech_max_body_bytes)
        limits = AudioLimits(
            max_seconds=state.settings.max_audio_seconds,
            max_bytes=state.settings.speech_max_body_bytes,
        )
        started = time.perf_counter()
        units, seconds = await state.run(_encode, stack, data, limits)
        elapsed = time.perf_counter() - started
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
        check_speaker(stack, body.speaker)
        check_output(body.format, body.sample_rate, formats)
        started = time.perf_counter()
        wav = await state.run(_synthesize, stack, units, body, field)
        elapsed = time.perf_counter() - started
        seconds = len(wav) / stack.sample_rate
        state.metrics.decode_seconds.labels(stack.variant, "oneshot").observe(elapsed)
        state.metrics.observe_compute(stack.variant, "decode", elapsed, seconds)
        audio = await state.run(_encode_output, wav, stack.sample_rate, body)
        headers = {"X-Sample-Rate": str(body.sample_rate), "X-Audio-Seconds": f"{seconds:.4f}"}
        return Response(audio, media_type=MEDIA_TYPES[body.format], headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WorkerRequestError(400, "invalid Content-Length header", code="invalid_body")
        if int(declared) > limit:
            raise _too_large(limit)
    parts: list[bytes] = []
    total = 0
    async for part in request.stream():
        total += len(part)
        if total > limit:
            raise _too_large(limit)
        parts.append(part)
    return b"".join(parts)


def _too_large(limit: int) -> WorkerRequestError:
    return WorkerRequestError(
        413, f"request body exceeds {limit} bytes", param="file", code="body_too_large"
    )


def _encode(stack: SpeechStack, data: bytes, limits: AudioLimits) -> tuple[Units, float]:
    try:
        wav = decode_audio(data, limits=limits)
    except AudioError as error:
        raise WorkerRequestError(400, str(error), param="file", code="invalid_audio") from None
    return stack.encode_units(wav), len(wav) / stack.sample_rate


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
    if not units.hubert:
        raise WorkerRequestError(
            400,
            f"{field}: no HuBERT units ([Hu<n>] tokens) to decode",
            param=field,
            code="invalid_units",
        )
    return units, field


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
