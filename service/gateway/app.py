"""The gateway application: settings -> pools and engine -> routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware import Middleware

from service import __version__
from service.checkpoints.make import resolve_layout
from service.gateway.audio.api_router import router as audio_router
from service.gateway.chat.api_router import router as chat_router
from service.gateway.docs import install_docs
from service.gateway.engine import Engine
from service.gateway.errors import install_error_handlers
from service.gateway.fewshot import load_bank, load_classification_bank
from service.gateway.generate.api_router import router as generate_router
from service.gateway.metrics import GatewayMetrics
from service.gateway.middleware import (
    AccessLogMiddleware,
    AuthMiddleware,
    BodyLimitMiddleware,
    BodyReaderMiddleware,
    ConcurrencyLimitMiddleware,
    DisconnectMiddleware,
    DrainingMiddleware,
    JSONTextMiddleware,
    JSONValuesLimitMiddleware,
    RequestIdMiddleware,
    WebSocketOriginMiddleware,
)
from service.gateway.models.aliases import parse_aliases
from service.gateway.models.api_router import router as models_router
from service.gateway.ops.api_router import router as ops_router
from service.gateway.pools import WorkerPool
from service.gateway.realtime.api_router import router as realtime_router
from service.gateway.realtime.client_secrets import ClientSecrets
from service.gateway.settings import GatewaySettings
from service.gateway.speech_units.api_router import router as speech_units_router
from service.gateway.state import GatewayState
from service.gateway.tasks import Tasks
from service.gateway.web.api_router import router as web_router

log = logging.getLogger("spiritlm.gateway")

ROUTERS: tuple[APIRouter, ...] = (
    models_router,
    ops_router,
    generate_router,
    audio_router,
    chat_router,
    speech_units_router,
    realtime_router,
    web_router,
)


def _middleware(
    settings: GatewaySettings, metrics: GatewayMetrics, is_draining: Callable[[], bool]
) -> list[Middleware]:
    """The middleware stack, outermost first; the order is the behaviour. Every request gets an
    id and an access-log line, refusals included. CORS comes before every refusal, so that
    preflights are answered without a key and refusals carry CORS headers a browser can read;
    then WebSocket origins (403), the API key (401), draining (503), the body size (413), the
    whole body read under its timeouts (408), its JSON values counted (413) and its text checked
    for lone surrogates (400) before the concurrency limit (429), so a slow body holds no slot;
    innermost, a client disconnect cancels the handler."""
    stack = [
        Middleware(RequestIdMiddleware),
        Middleware(AccessLogMiddleware, metrics=metrics),
    ]
    if settings.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=["x-request-id"],
            )
        )
    stack += [
        Middleware(WebSocketOriginMiddleware, allowed_origins=settings.cors_origins),
        Middleware(
            AuthMiddleware,
            api_keys=settings.api_keys,
            client_secrets=ClientSecrets.from_settings(settings),
            metrics_require_auth=settings.metrics_require_auth,
        ),
        Middleware(DrainingMiddleware, is_draining=is_draining),
        Middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes),
        Middleware(
            BodyReaderMiddleware,
            timeout=settings.body_read_timeout_seconds,
            idle_timeout=settings.body_idle_timeout_seconds,
            max_reading_bytes=settings.max_reading_body_bytes,
        ),
        Middleware(JSONValuesLimitMiddleware, max_values=settings.max_json_values),
        Middleware(JSONTextMiddleware),
        Middleware(
            ConcurrencyLimitMiddleware,
            max_concurrent=settings.max_concurrent_requests,
            metrics=metrics,
        ),
        Middleware(DisconnectMiddleware),
    ]
    return stack


def create_app(settings: GatewaySettings) -> FastAPI:
    metrics = GatewayMetrics()
    holder: dict[str, GatewayState] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        layout = resolve_layout(settings.checkpoints_dir, settings.cache_dir, progress=log.info)
        internal_key = settings.internal_api_key.get_secret_value()  # docs/security.md
        lm_pool = WorkerPool(
            "lm",
            settings.lm_urls,
            models_path="/v1/models",
            interval=settings.health_interval,
            api_key=internal_key,
        )
        speech_pool = WorkerPool(
            "speech",
            settings.speech_urls,
            health_path="/ready",
            interval=settings.health_interval,
            api_key=internal_key,
        )
        engine = Engine(
            layout,
            lm_pool,
            speech_pool,
            default_model=settings.model,
            max_tokens_limit=settings.max_tokens_limit,
            model_aliases=parse_aliases(settings.model_aliases),
        )
        fewshot = load_bank(layout, settings.fewshot_dir, settings.fewshot_shots)
        classification = load_classification_bank(settings.classification_dir)
        state = GatewayState(
            settings,
            engine,
            lm_pool,
            speech_pool,
            metrics,
            Tasks(engine, fewshot, settings),
            classification=classification,
        )
        app.state.gateway = state
        holder["state"] = state
        await lm_pool.check_all()
        await speech_pool.check_all()
        await engine.load_tokenizers()
        lm_pool.start()
        speech_pool.start()
        try:
            yield
        finally:
            await lm_pool.stop()
            await speech_pool.stop()
            await engine.aclose()

    def is_draining() -> bool:
        return bool(holder.get("state") and holder["state"].draining)

    app = FastAPI(
        title="spiritlm-serve",
        version=__version__,
        description="OpenAI-compatible API for Spirit LM (speech and text in one model).",
        lifespan=lifespan,
        middleware=_middleware(settings, metrics, is_draining),
        docs_url=None,  # docs.py serves /docs from local assets
        redoc_url=None,
    )
    install_error_handlers(app)
    install_docs(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
