"""Settings of the speech worker process (env SPIRITLM_*, flags --field-name)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from service.checkpoints.layout import VARIANTS
from service.config import ModelName, Settings


class SpeechWorkerSettings(Settings):
    """What one speech worker serves and the limits it enforces."""

    # NoDecode: the env var is a plain comma-separated list, like the flag, not JSON.
    models: Annotated[list[ModelName], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated variants to serve (they share HuBERT); "
        "empty = the configured --model.",
    )
    # Its own name: the gateway's limit is `max_body_bytes`, and `up` hands both processes the
    # same environment.
    speech_max_body_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Largest accepted request body in bytes."
    )
    max_streams: int = Field(
        default=32, ge=1, description="Concurrent synthesis streams; more are refused with 429."
    )
    max_tokens: int = Field(
        default=100_000,
        ge=1,
        description="Most speech tokens in one decode request or one stream.",
    )
    inference_threads: int = Field(
        default=1,
        ge=1,
        description="Model calls run at once (each in a worker thread); bounds torch's load.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    def served_models(self) -> list[str]:
        """The variants to load, in the usual order, without repeats."""
        names = self.models or [self.model]
        return [name for name in VARIANTS if name in names]

    def default_model(self) -> str:
        """The model of requests that name none: --model when served, else the first served."""
        served = self.served_models()
        return self.model if self.model in served else served[0]
