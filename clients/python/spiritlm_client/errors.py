"""Errors raised by the SDK."""

from __future__ import annotations

import json
from typing import Any


class SpiritLMError(Exception):
    """The gateway refused or failed a request (`status` is its HTTP status)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class SpiritLMConnectionError(SpiritLMError):
    """The gateway could not be reached, or the connection broke mid-response."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


def error_from_body(status: int, body: bytes) -> SpiritLMError:
    """The gateway's OpenAI-shaped error body ({"error": {message, param, code}}), or its text."""
    try:
        error = json.loads(body)["error"]
        return SpiritLMError(
            status, str(error["message"]), param=error.get("param"), code=error.get("code")
        )
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", errors="replace").strip()
        return SpiritLMError(status, text[:500] or f"HTTP {status}")


def raise_for_status(status: int, body: bytes) -> None:
    if status >= 400:
        raise error_from_body(status, body)


def raise_stream_error(event: dict[str, Any]) -> None:
    """An error reported inside a 200 event stream (the work failed after it started)."""
    error = event.get("error")
    if event.get("type") != "error" and not isinstance(error, dict):
        return
    details = error if isinstance(error, dict) else {}
    code = details.get("code")
    status = code if isinstance(code, int) else 500
    raise SpiritLMError(
        status,
        str(details.get("message", "the stream reported an error")),
        param=details.get("param"),
        code=None if isinstance(code, int) else code,
    )
