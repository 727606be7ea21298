"""Request and response models of /v1/speech/tokenize and /v1/speech/detokenize."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AudioFormat = Literal["wav", "pcm", "flac", "mp3", "opus", "aac"]


class UnitsIn(BaseModel):
    """Units as the §4.1 space-separated strings (`tokenize` output) or integer lists."""

    model_config = ConfigDict(extra="forbid")

    hubert: str | list[int]
    pitch: str | list[int] | None = None
    style: str | list[int] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: str | None = Field(default=None, description="Token string such as [Hu12][Hu7]...")
    units: UnitsIn | None = Field(default=None, description="Units dict (tokenize output).")
    speaker: int | str = Field(default=2, description="Speaker index or speakers.txt name.")
    duration_prediction: bool = True
    response_format: AudioFormat = "wav"
    sample_rate: int = 16000
    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="Seeds the §4.4 random style fallback."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DetokenizeRequest:
        if (self.tokens is None) == (self.units is None):
            raise ValueError("give exactly one of 'tokens' and 'units'")
        return self


class TokenizeResponse(BaseModel):
    model: str
    units: dict[str, str]
    tokens: str
    seconds: float
