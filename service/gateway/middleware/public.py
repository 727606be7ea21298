"""Paths open to everyone: no API key, never refused while draining, full or for their size.

Health checks and monitoring must get through a saturated or draining gateway, and the docs and
the web page load without a key.
"""

from __future__ import annotations

METRICS_PATH = "/metrics"  # public unless `metrics_require_auth` (auth.py)
PUBLIC_PATHS = frozenset(
    {
        "/",
        "/health",
        "/ready",
        METRICS_PATH,
        "/docs",
        "/openapi.json",
        "/docs/oauth2-redirect",
    }
)
PUBLIC_PREFIXES = ("/static/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
