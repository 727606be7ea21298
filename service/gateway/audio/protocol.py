"""Request and response models of /v1/audio/* (OpenAI's shapes, plus a few Spirit fields)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from service.audio.encode import AudioFormat
from service.gateway.sampling import SamplingFields

TranscriptionFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
StreamFormat = Literal["audio", "sse"]

# Unknown fields are kept, then refused by name (service/gateway/refusals.py).
OPENAI_SHAPE = ConfigDict(extra="allow")
MODEL_HELP = (
    "A Spirit LM variant, or an alias of one (the model_aliases setting: whisper-1, tts-1, ...; "
    "GET /v1/models lists them); unset = the default. Any other name is a 404."
)

# OpenAI transcription fields this route does not declare, and why each is refused.
TRANSCRIPTION_NOT_SUPPORTED = {
    "timestamp_granularities": "timestamps are not measured: verbose_json, srt and vtt have one "
    "segment spanning the whole audio",
    "chunking_strategy": "the audio is transcribed in one piece, never chunked",
    "known_speaker_names": "speaker diarization is not supported",
    "known_speaker_references": "speaker diarization is not supported",
    "keywords": "keyword boosting is not supported; give context in `prompt`",
    "languages": "Spirit LM transcribes English only; use language=en or leave it out",
}


class TranscriptionForm(BaseModel):
    """multipart/form-data of POST /v1/audio/transcriptions."""

    model_config = OPENAI_SHAPE

    file: UploadFile = Field(description="The audio file (wav, flac, ogg, mp3, webm, m4a, ...).")
    model: str | None = Field(default=None, description=MODEL_HELP)
    prompt: str | None = Field(
        default=None, description="Text placed before the few-shot examples as context."
    )
    response_format: TranscriptionFormat = "json"
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy.")
    language: str | None = Field(
        default=None, description="Only English ('en'): Spirit LM transcribes English speech."
    )
    include: list[str] = Field(
        default_factory=list,
        alias="include[]",
        description="'logprobs': the transcript's token log-probabilities, as vLLM reports them "
        "(response_format json, streamed or not).",
    )
    stream: bool = Field(default=False, description="SSE transcript.text.delta/done events.")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Text tokens to generate at most (default: from length)."
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)

    @model_validator(mode="before")
    @classmethod
    def _include_without_brackets(cls, data: Any) -> Any:
        # OpenAI's SDKs send `include[]`; curl users write `-F include=logprobs`: both count.
        if isinstance(data, dict) and "include" in data:
            data = dict(data)
            plain = data.pop("include")
            given = data.get("include[]", [])
            data["include[]"] = [
                *(given if isinstance(given, list) else [given]),
                *(plain if isinstance(plain, list) else [plain]),
            ]
        return data


class ClassificationForm(BaseModel):
    """multipart/form-data of POST /v1/audio/classifications (no OpenAI counterpart)."""

    model_config = OPENAI_SHAPE  # unknown fields are refused too, by the route

    file: UploadFile = Field(description="The audio file (wav, flac, ogg, mp3, webm, m4a, ...).")
    model: str | None = Field(default=None, description="A Spirit LM model; default if unset.")
    labels: list[str] = Field(
        default_factory=list,
        description="Candidate labels (repeat the field); default: the classification bank's.",
    )


class LabelScore(BaseModel):
    label: str
    logprob: float = Field(description="log P(label, then a line end | prompt).")
    probability: float = Field(description="Softmax of the logprobs over the candidates.")


class ClassificationOut(BaseModel):
    label: str
    scores: list[LabelScore] = Field(description="Every candidate, most likely first.")
    shots: int = Field(description="Exemplars in the prompt (0 = zero-shot).")
    usage: dict


class VoiceRef(BaseModel):
    model_config = OPENAI_SHAPE

    id: str


class SpeechRequest(SamplingFields):
    """JSON body of POST /v1/audio/speech."""

    model_config = OPENAI_SHAPE

    model: str | None = Field(default=None, description=MODEL_HELP)
    input: str = Field(min_length=1, description="The text to speak.")
    voice: StrictStr | StrictInt | VoiceRef | None = Field(
        default=None,
        description="Speaker index ('0'..'3'), speakers.txt name, or an OpenAI voice name "
        "(= the default speaker 2).",
    )
    instructions: str | None = Field(default=None, description="Not supported; must be empty.")
    response_format: AudioFormat = "mp3"
    speed: float = Field(
        default=1.0, ge=0.25, le=4.0, description="Only 1.0: the LM sets the speaking rate."
    )
    stream_format: StreamFormat = "audio"
    style: int | None = Field(
        default=None,
        ge=0,
        description="Expressive models: style token value [St<n>] the speech starts with.",
    )
    sample_rate: int = Field(default=24000, description="Output rate (OpenAI's 24 kHz default).")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Speech tokens to generate at most (default: from length)."
    )


class SegmentOut(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float = Field(description="Mean log-probability of the segment's tokens.")
    compression_ratio: float


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TranscriptionOut(BaseModel):
    text: str
    logprobs: list[TokenLogprob] | None = None
    usage: dict


class TranscriptionVerboseOut(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[SegmentOut]
    usage: dict
