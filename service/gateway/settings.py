"""Gateway settings (env SPIRITLM_*, flags --*)."""

from __future__ import annotations

from pydantic import Field, field_validator

from service.config import Settings


def _split(value: object) -> object:
    # Env vars carry lists as comma-separated strings; pydantic-settings would expect JSON.
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class GatewaySettings(Settings):
    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8000, description="Port the gateway listens on.")
    lm_urls: list[str] = Field(default_factory=list, description="LM worker base URLs.")
    speech_urls: list[str] = Field(default_factory=list, description="Speech worker base URLs.")
    api_keys: list[str] = Field(
        default_factory=list, description="Accepted Bearer API keys; empty = no auth."
    )
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins.")
    max_body_bytes: int = Field(default=25 * 1024 * 1024, gt=0, description="Largest request body.")
    max_tokens_limit: int = Field(default=2048, gt=0, description="Largest max_tokens accepted.")
    max_concurrent_requests: int = Field(
        default=64, gt=0, description="Requests in flight before 429."
    )
    health_interval: float = Field(default=2.0, gt=0, description="Seconds between worker checks.")
    drain_seconds: float = Field(default=30.0, ge=0, description="Grace period on SIGTERM.")

    _split_lists = field_validator(
        "lm_urls", "speech_urls", "api_keys", "cors_origins", mode="before"
    )(_split)
