"""Gateway settings (env SPIRITLM_*, flags --*)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from service.config import Settings
from service.errors import SpiritError

# Lists come from env vars and flags as comma-separated strings, not JSON.
CommaList = Annotated[list[str], NoDecode]


def _split(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class GatewaySettings(Settings):
    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8000, description="Port the gateway listens on.")
    lm_urls: CommaList = Field(default_factory=list, description="LM worker base URLs.")
    speech_urls: CommaList = Field(default_factory=list, description="Speech worker base URLs.")
    api_keys: CommaList = Field(
        default_factory=list,
        description="Accepted Bearer API keys, comma-separated; unset or empty = no auth (logged "
        "as a warning at start-up, as an error when listening beyond loopback). An empty entry "
        "(',' or 'key,') is refused.",
    )
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Allowed CORS origins ('*' = any); also the only pages besides the gateway's "
        "own that may open its WebSockets.",
    )
    max_body_bytes: int = Field(default=25 * 1024 * 1024, gt=0, description="Largest request body.")
    max_tokens_limit: int = Field(default=2048, gt=0, description="Largest max_tokens accepted.")
    max_concurrent_requests: int = Field(
        default=64, gt=0, description="Requests in flight before 429."
    )
    health_interval: float = Field(default=2.0, gt=0, description="Seconds between worker checks.")
    drain_seconds: float = Field(default=30.0, ge=0, description="Grace period on SIGTERM.")
    max_input_chars: int = Field(
        default=4096, gt=0, description="Longest text input (speech `input`, transcription prompt)."
    )
    max_prompt_chars: int = Field(
        default=200_000,
        gt=0,
        description="Most text characters in one LM prompt (/v1/generate `prompt` or `inputs`, "
        "chat messages), checked before tokenizing.",
    )
    fewshot_dir: Path | None = Field(
        default=None,
        description="Exemplar bank for few-shot ASR/TTS prompts (manifest.jsonl + audio); "
        "unset = the generated bank of the embedded checkpoints, or none (zero-shot).",
    )
    fewshot_shots: int = Field(
        default=3, ge=0, description="Exemplars per few-shot ASR/TTS prompt (0 = zero-shot)."
    )
    classification_dir: Path | None = Field(
        default=None,
        description="Exemplar bank for few-shot speech classification (manifest.jsonl + audio, "
        "`text` = the label); every exemplar is a shot. Unset = zero-shot, labels required.",
    )
    end_of_speech_silence_tokens: int = Field(
        default=5,
        ge=0,
        description="Consecutive silence HuBERT tokens after speech that end a spoken reply "
        "(chat audio, realtime, TTS, /v1/generate end_of_turn); 0 = only the model's own turn "
        "end (a line end) or max_tokens end it. See docs/speech-turns.md.",
    )
    end_of_speech_min_speech_tokens: int = Field(
        default=10,
        ge=0,
        description="Speech (non-silence) HuBERT tokens a spoken reply needs before silence "
        "can end it.",
    )
    realtime_max_sessions: int = Field(
        default=32, gt=0, description="Realtime (WebSocket) sessions open at once before refusal."
    )
    realtime_max_session_seconds: float = Field(
        default=1800.0, gt=0, description="Longest realtime session."
    )
    realtime_idle_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Realtime session closed after this long without events."
    )
    realtime_max_buffer_seconds: float = Field(
        default=60.0, gt=0, description="Most input audio a realtime turn buffers."
    )
    realtime_max_message_bytes: int = Field(
        default=4 * 1024 * 1024, gt=0, description="Largest realtime client event accepted."
    )
    realtime_context_tokens: int = Field(
        default=0,
        ge=0,
        description="LM context for realtime prompts; 0 = the smallest max_model_len the LM "
        "workers report (the checkpoint's max_position_embeddings before any did).",
    )

    metrics_require_auth: bool = Field(
        default=False,
        description="With api_keys set, /metrics needs a key too (Prometheus then sends one).",
    )

    _split_lists = field_validator("lm_urls", "speech_urls", "cors_origins", mode="before")(_split)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_without_empty_entries(cls, value: object) -> object:
        # An empty entry would otherwise vanish and could leave a service open by accident
        # (SPIRITLM_API_KEYS="," gives no keys at all); only a wholly empty value means no auth.
        # A SpiritError, not a ValueError: pydantic would quote the input, i.e. the keys.
        if isinstance(value, str):
            if not value.strip():
                return []
            value = value.split(",")
        if isinstance(value, list):
            keys = [item.strip() if isinstance(item, str) else item for item in value]
            if any(key == "" for key in keys):
                raise SpiritError(
                    "api_keys has an empty entry (check for stray commas): give comma-separated "
                    "keys, or leave it empty for no auth"
                )
            return keys
        return value
