"""Gateway settings (env SPIRITLM_*, flags --*)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from service.config import Settings
from service.errors import SpiritError
from service.gateway.models.aliases import DEFAULT_ALIASES, AliasTable

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

    # A SecretStr, so it is never in a repr or a log line (docs/deployment.md, "Signing key").
    signing_key: SecretStr = Field(
        default="",
        validate_default=True,
        description="HMAC-SHA256 key that signs the self-contained chat audio ids and realtime "
        "client secrets; every gateway replica must have the same one. Empty = a random key per "
        "process (ids and secrets then work only on the gateway process that made them; a "
        "warning at start-up).",
    )
    client_secret_default_seconds: int = Field(
        default=600,
        ge=10,
        le=7200,
        description="Lifetime in seconds of a realtime client secret created without "
        "expires_after.seconds (at most client_secret_max_seconds).",
    )
    client_secret_max_seconds: int = Field(
        default=7200,
        ge=10,
        le=7200,
        description="Longest lifetime in seconds a realtime client secret may ask for "
        "(expires_after.seconds); OpenAI allows 10..7200.",
    )
    body_read_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Seconds a client has to send a whole request body once its headers are in; "
        "slower is 408. No concurrency slot is taken before the body is read.",
    )
    body_idle_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Longest pause in seconds between two parts of a request body before 408.",
    )
    max_reading_body_bytes: int = Field(
        default=256 * 1024 * 1024,
        gt=0,
        description="Bytes of request bodies being received at once, all requests together; a "
        "request that would go over is refused with 429 (bounds the memory of bodies read before "
        "a concurrency slot is taken).",
    )
    write_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest time in seconds a client may leave a response unread once the "
        "server's send buffers are full; its connection is then closed and its work cancelled.",
    )
    max_json_values: int = Field(
        default=1_000_000,
        gt=0,
        description="Most values (array items and object members, counted by their commas) in a "
        "JSON request body, checked before it is parsed; more is 413.",
    )
    header_read_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection has to send a request's headers, from when it opens or "
        "its last response ended; slower connections are closed.",
    )
    max_connections: int = Field(
        default=1024,
        gt=0,
        description="Open HTTP and WebSocket connections before new ones get 503 (uvicorn's "
        "limit_concurrency); bounds what header-phase and idle connections can hold.",
    )
    model_aliases: AliasTable = Field(
        default=DEFAULT_ALIASES,
        description="Other model names requests may use, comma-separated name=target pairs; "
        "target 'default' = the configured --model, or a Spirit LM variant. Defaults to OpenAI's "
        "audio model names (whisper-1, tts-1, gpt-realtime, ...); listed in /v1/models. Any "
        "other unknown name is a 404. See service/gateway/models/aliases.py.",
    )
    realtime_max_items: int = Field(
        default=2048,
        gt=0,
        description="Most conversation items one realtime session holds (created, committed "
        "turns and replies); more are refused with an error event until items are deleted.",
    )
    realtime_max_history_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="Most bytes of conversation history one realtime session holds (text, "
        "speech tokens, and user audio waiting to be encoded); items past it are refused.",
    )
    realtime_max_outbox_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        description="Bytes of server events queued for a realtime client before the session "
        "stops reading its events (a client that does not read holds no more than this).",
    )
    realtime_encode_window_seconds: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="When above 0, realtime turns are encoded while spoken, in windows of this "
        "many seconds of kept units (rounded up to the model's unit grid: 0.04 s base, 2 s "
        "expressive), so that only the tail is left when the turn ends; the units can differ "
        "from whole-turn units (docs/realtime.md#encoding-while-the-user-speaks has the "
        "measured agreement). 0 (default) = each turn is encoded whole when it ends (in the "
        "speech worker's realtime_encoder_dtype, docs/realtime.md#encoder-precision).",
    )
    realtime_encode_left_seconds: float = Field(
        default=4.0,
        ge=1,
        le=60,
        description="Seconds of audio before each window (and before the tail) that the "
        "encoders see but whose units come from the previous window.",
    )
    realtime_encode_right_seconds: float = Field(
        default=4.0,
        ge=0.1,
        le=60,
        description="Seconds of audio after each window that the encoders see; a window is "
        "sent once the turn's audio covers it.",
    )
    max_request_audio_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Most seconds of audio in all audio inputs of one request together "
        "(/v1/generate `inputs`, chat `input_audio` parts); each input is also bounded by "
        "max_audio_seconds. Checked before any input is encoded; more is refused with 400.",
    )
    max_detokenize_units: int = Field(
        default=2500,
        gt=0,
        description="Most HuBERT units ([Hu] tokens or units.hubert entries) in one "
        "/v1/speech/detokenize request (2500 = 100 s of units at 25 Hz); more are refused with "
        "400 before any work. Vocoder memory and time grow with it (docs/security.md).",
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
