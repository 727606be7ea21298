"""GET / (the voice page) and GET /static/voice/<file> (its scripts and style).

The page talks to WS /v1/realtime like any other client. Both paths are public (middleware).
The page never holds an API key: it opens each session with an ephemeral client secret
(realtime/client_secrets.py), sent as the WebSocket subprotocol ``openai-insecure-api-key.<ek_>``:
one the user pastes (made with an API key), or, on a gateway without API keys, one it asks
POST /v1/realtime/client_secrets for (static/app.js).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.gateway.errors import APIError

router = APIRouter()
STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
NO_CACHE = {"Cache-Control": "no-cache"}


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get("/static/voice/{name}", include_in_schema=False)
async def static_file(name: str) -> FileResponse:
    path = STATIC / name
    # Only the page's own files: a plain name, no path separators or dot-files.
    if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        raise APIError(404, f"no static file '{name}'")
    media_type = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media_type, headers=NO_CACHE)
