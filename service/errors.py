"""Error types shared by the service. Each one carries a message meant for the user."""

from __future__ import annotations

from pathlib import Path


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
