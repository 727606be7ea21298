"""Error types shared by the service, and the OpenAI error body every process answers with.

Each error type carries a message meant for the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class SpiritError(Exception):
    """Base class for errors caused by input or configuration, never by a bug."""


class CheckpointError(SpiritError):
    """A checkpoint file is missing, malformed or does not match its expected format."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class AudioError(SpiritError):
    """Audio that cannot be used: undecodable, empty, too short, too long or non-finite."""


class UnitFormatError(SpiritError):
    """A unit or token string that cannot be parsed."""


def error_body(
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The OpenAI error shape ``{"error": {"message", "type", "param", "code"}}``.

    ``kind`` is the ``type`` field; the gateway derives it from the HTTP status
    (`service.gateway.errors.error_type`), the speech worker names it at each error.
    """
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
