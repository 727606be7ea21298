"""The gateway application: settings -> pools and engine -> routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.checkpoints.make import resolve_layout
from service.gateway.engine import Engine
from service.gateway.errors import install_error_handlers
from service.gateway.fewshot import load_bank, load_classification_bank
from service.gateway.metrics import GatewayMetrics
from service.gateway.middleware import GatewayMiddleware
from service.gateway.pools import WorkerPool
from service.gateway.settings import GatewaySettings
from service.gateway.state import GatewayState
from service.gateway.tasks import Tasks

log = logging.getLogger("spiritlm.gateway")


def _routers() -> list:
    from service.gateway.generate.api_router import router as generate
    from service.gateway.models.api_router import router as models

    routers = [models, generate]
    for module in ("audio", "chat", "speech_units", "realtime", "web"):
        try:
            imported = __import__(f"service.gateway.{module}.api_router", fromlist=["router"])
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith(f"service.gateway.{module}"):
                continue
            raise
        routers.append(imported.router)
    return routers


def create_app(settings: GatewaySettings) -> FastAPI:
    metrics = GatewayMetrics()
    holder: dict[str, GatewayState] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        layout = resolve_layout(settings.checkpoints_dir, settings.cache_dir, progress=log.info)
        lm_pool = WorkerPool(
            "lm", settings.lm_urls, models_path="/v1/models", interval=settings.health_interval
        )
        speech_pool = WorkerPool(
            "speech", settings.speech_urls, health_path="/ready", interval=settings.health_interval
        )
        engine = Engine(
            layout,
            lm_pool,
            speech_pool,
            default_model=settings.model,
            max_tokens_limit=settings.max_tokens_limit,
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
        lm_pool.start()
        speech_pool.start()
        try:
            yield
        finally:
            await lm_pool.stop()
            await speech_pool.stop()
            await engine.aclose()

    app = FastAPI(
        title="spiritlm-serve",
        version=__version__,
        description="OpenAI-compatible API for Spirit LM (speech and text in one model).",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in _routers():
        app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["x-request-id"],
        )
    app.add_middleware(
        GatewayMiddleware,
        metrics=metrics,
        api_keys=settings.api_keys,
        max_body_bytes=settings.max_body_bytes,
        max_concurrent=settings.max_concurrent_requests,
        is_draining=lambda: bool(holder.get("state") and holder["state"].draining),
    )
    return app
