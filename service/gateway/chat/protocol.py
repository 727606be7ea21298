"""Request and response models of POST /v1/chat/completions (OpenAI's shapes).

Message content is validated by `conversation.py` rather than by pydantic, so that an error
names the exact field (``messages[1].content[0].input_audio.format``) instead of pydantic's
union-branch paths.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.gateway.sampling import SamplingFields

# "pcm16" is raw little-endian 16-bit mono; every format is produced at OUTPUT_SAMPLE_RATE.
ChatAudioFormat = Literal["wav", "mp3", "flac", "opus", "aac", "pcm16"]


class AudioReference(BaseModel):
    """An assistant turn's audio from an earlier response, named by its id."""

    id: str = Field(min_length=1, max_length=200)


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = Field(
        default=None,
        description="A string, or parts: {type: text, text} and (user) "
        "{type: input_audio, input_audio: {data: base64, format}}.",
    )
    audio: AudioReference | None = Field(
        default=None, description="Assistant turn: the audio of an earlier response."
    )
    name: str | None = None


class AudioOptions(BaseModel):
    voice: str | int | dict[str, str] | None = Field(
        default=None,
        description="Speaker index ('0'..'3'), speakers.txt name, or an OpenAI voice name "
        "(= the default speaker 2); see GET /v1/audio/voices.",
    )
    format: ChatAudioFormat = "wav"


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(SamplingFields):
    # Unknown OpenAI options are ignored; those that would change the answer and are not
    # supported (tools, logprobs, penalties, ...) are refused by `serving.check_unsupported`.
    model_config = ConfigDict(extra="ignore")

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
