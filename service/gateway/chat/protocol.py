"""Request and response models of POST /v1/chat/completions (OpenAI's shapes).

Message content is validated by `conversation.py` rather than by pydantic, so that an error
names the exact field (``messages[1].content[0].input_audio.format``) instead of pydantic's
union-branch paths.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from service.gateway.refusals import refuse, refuse_unknown
from service.gateway.sampling import SamplingFields

# "pcm16" is raw little-endian 16-bit mono; every format is produced at OUTPUT_SAMPLE_RATE.
ChatAudioFormat = Literal["wav", "mp3", "flac", "opus", "aac", "pcm16"]


# Unknown fields are kept, then refused by name (service/gateway/refusals.py).
OPENAI_SHAPE = ConfigDict(extra="allow")

NO_TOOLS = "tool calling is not supported: a base speech LM does not call tools"
# OpenAI fields this route does not declare, and why each is refused (docs/audio-api.md).
NOT_SUPPORTED = {
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "Spirit LM is not a reasoning model",
    "verbosity": "not supported by Spirit LM",
    "safety_identifier": "no abuse monitoring runs here; use `user` for replica affinity",
    "moderation": "no moderation runs here",
    "prompt_cache_options": "not supported; vLLM's prefix cache works without options",
    "prompt_cache_retention": "not supported; vLLM's prefix cache works without options",
    "messages.tool_calls": NO_TOOLS,
    "messages.function_call": NO_TOOLS,
    "messages.tool_call_id": NO_TOOLS,
}


class AudioReference(BaseModel):
    """An assistant turn's audio from an earlier response, named by its id.

    A client may send back the whole `audio` object of the response: its other fields are the
    response's own copy, and the id alone decides which audio the turn was.
    """

    model_config = OPENAI_SHAPE

    data: str | None = Field(default=None, description="The response's copy; the id decides.")
    expires_at: int | None = Field(default=None, description="The response's copy.")
    transcript: str | None = Field(default=None, description="The response's copy.")
    # The id holds the audio's speech units; its length is bounded by max_tokens_limit
    # (ChatMemory.get_audio, chat/memory.py), checked before it is decoded.
    id: str = Field(min_length=1)


class ChatMessage(BaseModel):
    model_config = OPENAI_SHAPE

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = Field(
        default=None,
        description="A string, or parts: {type: text, text} and (user) "
        "{type: input_audio, input_audio: {data: base64, format}}.",
    )
    audio: AudioReference | None = Field(
        default=None, description="Assistant turn: the audio of an earlier response."
    )
    name: str | None = Field(default=None, description="Refused: turns have no speaker names.")
    refusal: str | None = Field(default=None, description="Assistant turn: must be null.")


class AudioOptions(BaseModel):
    model_config = OPENAI_SHAPE

    voice: StrictStr | StrictInt | dict[str, str] | None = Field(
        default=None,
        description="Speaker index ('0'..'3'), speakers.txt name, or an OpenAI voice name "
        "(= the default speaker 2); see GET /v1/audio/voices.",
    )
    format: ChatAudioFormat = "wav"


class StreamOptions(BaseModel):
    model_config = OPENAI_SHAPE

    include_usage: bool = False
    include_obfuscation: bool | None = Field(default=None, description="Only false: no padding.")


class ChatCompletionRequest(SamplingFields):
    # Every field is honoured or refused by `check_supported`; unknown ones are refused by name.
    model_config = OPENAI_SHAPE

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    modalities: list[Literal["text", "audio"]] | None = Field(default=None, max_length=2)
    audio: AudioOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = Field(default=None, max_length=256)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = Field(
        default=None,
        max_length=256,
        description="Keeps requests with the same key on one LM replica (prefix-cache reuse).",
    )

    def check_supported(self) -> None:
        """Refuse, by name, every option given that this server does not honour."""
        refuse_unknown(self, NOT_SUPPORTED)
        if self.n != 1:
            raise refuse("n", f"only n=1 is supported (got {self.n})")
        no_logprobs = "not supported for chat completions"
        refusals = {
            "tools": (bool(self.tools), NO_TOOLS),
            "tool_choice": (self.tool_choice not in (None, "none"), NO_TOOLS),
            "parallel_tool_calls": (self.parallel_tool_calls is not None, NO_TOOLS),
            "functions": (bool(self.functions), NO_TOOLS),
            "function_call": (self.function_call not in (None, "none"), NO_TOOLS),
            "logprobs": (bool(self.logprobs), no_logprobs),
            "top_logprobs": (bool(self.top_logprobs), no_logprobs),
            "logit_bias": (bool(self.logit_bias), "not supported by this server"),
            "frequency_penalty": (bool(self.frequency_penalty), "use repetition_penalty"),
            "presence_penalty": (bool(self.presence_penalty), "use repetition_penalty"),
            "response_format": (
                self.response_format is not None and self.response_format != {"type": "text"},
                "only {type: text}: structured output is not supported",
            ),
            "store": (bool(self.store), "completions are not stored here"),
            "metadata": (bool(self.metadata), "completions are not stored here"),
            "service_tier": (
                self.service_tier not in (None, "auto", "default"),
                "only 'auto' or 'default': there is one tier",
            ),
            "stream_options.include_obfuscation": (
                bool(self.stream_options and self.stream_options.include_obfuscation),
                "stream obfuscation is not supported",
            ),
            "stream_options": (
                self.stream_options is not None and not self.stream,
                "only with stream: true",
            ),
            "max_tokens": (
                self.max_tokens is not None and self.max_completion_tokens is not None,
                "give max_completion_tokens or max_tokens, not both",
            ),
            "audio": (
                self.audio is not None and "audio" not in (self.modalities or []),
                'audio options need modalities ["text", "audio"]',
            ),
        }
        for name, (refused, why) in refusals.items():
            if refused:
                raise refuse(name, why)
        for index, message in enumerate(self.messages):
            if message.name is not None:
                raise refuse(f"messages[{index}].name", "participant names are not supported")
            if message.refusal is not None:
                raise refuse(f"messages[{index}].refusal", "a turn cannot be a refusal")


class ChatCompletionAudio(BaseModel):
    """The `audio` of an assistant message in a response (OpenAI's ChatCompletionAudio)."""

    id: str
    data: str = Field(description="Base64 audio in the requested format.")
    expires_at: int
    transcript: str = Field(description="Always empty: see docs (no parallel text is generated).")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    audio: ChatCompletionAudio | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[Choice]
    usage: Usage
