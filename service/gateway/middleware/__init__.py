"""The gateway's ASGI middleware, one concern per module.

Plain ASGI (not BaseHTTPMiddleware), so streamed responses and WebSockets pass through
untouched. `service.gateway.app` stacks them, outermost first: request id, access log, CORS
(Starlette's, when origins are set), WebSocket origin, auth, draining, body limit, body reader
(the whole body under its timeouts), JSON values, JSON text, concurrency limit, disconnect
(cancels the handler).
"""

from service.gateway.middleware.access_log import AccessLogMiddleware
from service.gateway.middleware.auth import AuthMiddleware
from service.gateway.middleware.body_limit import BodyLimitMiddleware
from service.gateway.middleware.body_reader import BodyReaderMiddleware
from service.gateway.middleware.concurrency import ConcurrencyLimitMiddleware
from service.gateway.middleware.disconnect import DisconnectMiddleware
from service.gateway.middleware.draining import DrainingMiddleware
from service.gateway.middleware.json_limit import JSONValuesLimitMiddleware
from service.gateway.middleware.json_text import JSONTextMiddleware
from service.gateway.middleware.origin import WebSocketOriginMiddleware
from service.gateway.middleware.request_id import RequestIdMiddleware

__all__ = [
    "AccessLogMiddleware",
    "AuthMiddleware",
    "BodyLimitMiddleware",
    "BodyReaderMiddleware",
    "ConcurrencyLimitMiddleware",
    "DisconnectMiddleware",
    "DrainingMiddleware",
    "JSONTextMiddleware",
    "JSONValuesLimitMiddleware",
    "RequestIdMiddleware",
    "WebSocketOriginMiddleware",
]
