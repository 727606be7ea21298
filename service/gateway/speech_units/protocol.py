"""Request and response models of /v1/speech/tokenize and /v1/speech/detokenize.

Units and the encoding result have the speech worker's shapes (`service/speech_worker/protocol.py`):
the gateway passes them through unchanged.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.speech_worker.protocol import AudioFormat, EncodeResult, UnitsPayload


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: str | None = Field(default=None, description="Token string such as [Hu12][Hu7]...")
    units: UnitsPayload | None = Field(default=None, description="Units dict (tokenize output).")
    speaker: int | str = Field(default=2, description="Speaker index or speakers.txt name.")
    duration_prediction: bool = True
    response_format: AudioFormat = "wav"
    sample_rate: int = 16000
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="Seeds the random style fallback (docs/format.md#token-string-to-units).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DetokenizeRequest:
        if (self.tokens is None) == (self.units is None):
            raise ValueError("give exactly one of 'tokens' and 'units'")
        return self


class TokenizeResponse(EncodeResult):
    """The units, the token string and the input length, as the speech worker encoded them."""
