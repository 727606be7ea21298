"""Request and response models of /v1/audio/* (OpenAI's shapes, plus a few Spirit fields)."""

from __future__ import annotations

from typing import Literal

from fastapi import UploadFile
from pydantic import BaseModel, Field

from service.audio.encode import AudioFormat
from service.gateway.sampling import SamplingFields

TranscriptionFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
StreamFormat = Literal["audio", "sse"]


class TranscriptionForm(BaseModel):
    """multipart/form-data of POST /v1/audio/transcriptions."""

    file: UploadFile = Field(description="The audio file (wav, flac, ogg, mp3, webm, m4a, ...).")
    model: str | None = Field(
        default=None, description="A Spirit LM model; other names (whisper-1) mean the default."
    )
    prompt: str | None = Field(
        default=None, description="Text placed before the few-shot examples as context."
    )
    response_format: TranscriptionFormat = "json"
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy.")
    language: str | None = Field(default=None, description="Accepted and ignored (English).")
    stream: bool = Field(default=False, description="SSE transcript.text.delta/done events.")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Text tokens to generate at most (default: from length)."
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


class ClassificationForm(BaseModel):
    """multipart/form-data of POST /v1/audio/classifications (no OpenAI counterpart)."""

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
    id: str


class SpeechRequest(SamplingFields):
    """JSON body of POST /v1/audio/speech."""

    model: str | None = Field(
        default=None, description="A Spirit LM model; other names (tts-1) mean the default."
    )
    input: str = Field(min_length=1, description="The text to speak.")
    voice: str | int | VoiceRef | None = Field(
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
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionOut(BaseModel):
    text: str
    usage: dict


class TranscriptionVerboseOut(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[SegmentOut]
    usage: dict
