"""Request and response models of POST /v1/generate (Spirit-native interleaved generation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.audio.encode import AudioFormat
from service.gateway.sampling import SamplingFields


class GenerateInput(BaseModel):
    """One prompt part: text, or speech given as a base64 audio file or as its token string."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "speech"]
    text: str | None = Field(
        default=None,
        description="Text (type=text); no [Text]/[Speech] markers, speech tokens or special "
        "tokens (<s>, </s>): write those in `prompt`.",
    )
    audio: str | None = Field(default=None, description="Base64 audio file (type=speech).")
    tokens: str | None = Field(
        default=None,
        description="Speech token string (type=speech): only this model's unit tokens, such as "
        "[Hu12][Hu7] (expressive: also [Pi..], [St..]), nothing between them.",
    )

    @model_validator(mode="after")
    def _one_content(self) -> GenerateInput:
        if self.type == "text" and (self.text is None or self.audio or self.tokens):
            raise ValueError("a text input needs 'text' (and no 'audio' or 'tokens')")
        if self.type == "speech" and (self.audio is None) == (self.tokens is None):
            raise ValueError("a speech input needs exactly one of 'audio' or 'tokens'")
        return self


class GenerateRequest(SamplingFields):
    # Our own API: a misspelt or unsupported field is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    inputs: list[GenerateInput] = Field(default_factory=list, max_length=64)
    prompt: str | None = Field(default=None, description="Explicit prompt string, used verbatim.")
    output_modality: Literal["text", "speech", "arbitrary"] = "arbitrary"
    max_tokens: int = Field(default=200, ge=1)
    speaker: int = Field(default=2, ge=0, description="A speaker of the model's vocoder.")
    response_format: AudioFormat = "wav"
    sample_rate: int = Field(default=16000, ge=8000, le=48000)
    stream: bool = False
    stop: str | list[str] | None = Field(
        default=None,
        description="Up to 4 strings; generation ends when the generated text contains one "
        "(matched within text segments, left out of the output).",
    )
    audio: bool = Field(
        default=True,
        description="false: speech segments carry their tokens only, nothing is vocoded "
        "(vocode them later with POST /v1/speech/detokenize).",
    )
    end_of_turn: bool = Field(
        default=False,
        description="End when the model's turn is over, as spoken replies do: at a line end "
        "(allowed even in speech output) or at silence after speech (the gateway's "
        "end_of_speech_* settings). finish_reason 'stop', `end` says which.",
    )

    def text_chars(self) -> int:
        """Characters of prompt text: the explicit prompt, else the text and token strings of
        the inputs (bounded by max_prompt_chars before tokenizing)."""
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(item.text or "") + len(item.tokens or "") for item in self.inputs)

    @model_validator(mode="after")
    def _has_prompt(self) -> GenerateRequest:
        if not self.inputs and self.prompt is None:
            raise ValueError("give 'inputs' (a list of text/speech parts) or 'prompt'")
        return self


class TextSegmentOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class SpeechSegmentOut(BaseModel):
    type: Literal["speech"] = "speech"
    tokens: str
    # None when the request said `audio: false`.
    audio: str | None = Field(description="Base64 audio in `format`.")
    format: AudioFormat | None
    sample_rate: int | None
    seconds: float | None


class GenerateResponse(BaseModel):
    id: str
    object: Literal["spiritlm.generation"] = "spiritlm.generation"
    created: int
    model: str
    prompt: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    finish_reason: str | None
    end: str | None = Field(
        default=None,
        description="Which condition ended the generation: line_end, stop_string, "
        "end_of_speech, eos or max_tokens (docs/speech-turns.md).",
    )
    segments: list[TextSegmentOut | SpeechSegmentOut]
    dropped: list[dict[str, str]]
    usage: dict[str, int]
