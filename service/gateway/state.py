"""Per-app state the routes reach through `request.app.state.gateway`."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from service.gateway.engine import Engine
from service.gateway.fewshot import ExemplarBank
from service.gateway.metrics import GatewayMetrics
from service.gateway.pools import WorkerPool
from service.gateway.settings import GatewaySettings
from service.gateway.tasks import Tasks


@dataclass
class GatewayState:
    settings: GatewaySettings
    engine: Engine
    lm_pool: WorkerPool
    speech_pool: WorkerPool
    metrics: GatewayMetrics
    tasks: Tasks
    draining: bool = False
    classification: ExemplarBank = field(default_factory=ExemplarBank.empty)


def gateway_state(request: Request) -> GatewayState:
    return request.app.state.gateway
