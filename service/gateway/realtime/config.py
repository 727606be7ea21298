"""A realtime session's configuration: defaults, `session.update` applied, rendered per dialect.

What the Spirit LM session does with each setting:

* ``output_modalities`` (beta ``modalities``): ``["audio"]`` generates speech only (speech
  continuation, text -> speech), ``["text"]`` generates text only (speech -> text), both
  (``["audio", "text"]``, the beta's default) lets the model choose and interleave (ARBITRARY).
* ``audio.input.format`` / ``input_audio_format``: pcm16 mono at ``rate`` (any of the rates the
  speech stack resamples; 24 kHz by default, 16 kHz common), or G.711 u-law / A-law at 8 kHz
  (audio_format.py).
* ``audio.output.format`` / ``output_audio_format``: pcm16 at ``rate`` (24 kHz by default), or
  G.711 at 8 kHz.
* ``type``: ``"realtime"`` (responses) or ``"transcription"`` (input audio is only transcribed;
  transcription.py).
* ``audio.output.voice`` / ``voice``: a vocoder speaker (index or name) or an OpenAI voice name
  (the default speaker).
* ``audio.input.turn_detection`` / ``turn_detection``: ``server_vad`` (Silero VAD) with
  threshold, prefix_padding_ms, silence_duration_ms, create_response, interrupt_response,
  idle_timeout_ms (idle_timeout.py); or
  null for manual turns (the client commits and asks for responses).
* ``audio.input.transcription`` / ``input_audio_transcription``: when set, each committed user
  turn is transcribed by the LM itself (Spirit LM's speech -> text).
* ``instructions``: text put before the conversation (the model has no system role).
* ``max_output_tokens`` / ``max_response_output_tokens``, ``temperature``.

The OpenAI fields the session does not honour (tools, speed, noise reduction, ...) are refused
by name before anything is applied (unhonoured.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from service.audio.encode import check_sample_rate
from service.gateway.errors import APIError
from service.gateway.realtime import audio_format, transcription, unhonoured
from service.gateway.realtime.protocol import BETA, AudioFormatIn, ProtocolError, SessionIn
from service.gateway.realtime.vad import VadSettings
from service.gateway.voices import Voice, resolve_voice
from service.lm.prompt import OutputModality

DEFAULT_RATE = 24000
DEFAULT_MAX_OUTPUT_TOKENS = 200  # the reference's examples use 200 for speech output
DEFAULT_TEMPERATURE = 0.8  # the reference's examples sample at 0.8-0.9, top_p 0.95
TOP_P = 0.95


@dataclass(frozen=True)
class TurnDetection:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None  # idle_timeout.py

    def vad(self) -> VadSettings:
        return VadSettings(self.threshold, self.prefix_padding_ms, self.silence_duration_ms)

    def render(self) -> dict[str, Any]:
        return {"type": "server_vad", **dataclasses.asdict(self)}


@dataclass(frozen=True)
class SessionConfig:
    model: str
    type: str = "realtime"  # or "transcription" (transcription.py)
    voice: str | int = "alloy"
    speaker: int = 2
    instructions: str = ""
    output_modalities: tuple[str, ...] = ("audio",)
    input_rate: int = DEFAULT_RATE
    output_rate: int = DEFAULT_RATE
    input_format: str = audio_format.PCM16
    output_format: str = audio_format.PCM16
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription: dict[str, Any] | None = None
    temperature: float = DEFAULT_TEMPERATURE
    max_output_tokens: int | str = DEFAULT_MAX_OUTPUT_TOKENS

    def updated(
        self, update: SessionIn, voices: list[Voice], event_id: str | None
    ) -> SessionConfig:
        """A new configuration with the given fields applied; the old one stays on error."""
        try:
            return self._apply(update, voices)
        except ProtocolError as error:
            error.event_id = event_id
            raise

    def _apply(self, update: SessionIn, voices: list[Voice]) -> SessionConfig:
        unhonoured.check_session(update)
        given = update.model_fields_set
        changes: dict[str, Any] = {}
        if "model" in given and update.model not in (None, self.model):
            raise ProtocolError(
                "invalid_value",
                f"the model cannot be changed in a session (it is {self.model}); "
                "reconnect with ?model=...",
                param="session.model",
            )
        if "type" in given:
            changes["type"] = transcription.session_type(update.type)
        if "instructions" in given:
            changes["instructions"] = update.instructions or ""
        for key in ("output_modalities", "modalities"):
            if key in given and getattr(update, key) is not None:
                changes["output_modalities"] = _modalities(getattr(update, key))
        if "temperature" in given and update.temperature is not None:
            changes["temperature"] = update.temperature
        for key in ("max_output_tokens", "max_response_output_tokens"):
            if key in given and getattr(update, key) is not None:
                changes["max_output_tokens"] = getattr(update, key)
        self._apply_beta_audio(update, given, changes)
        if update.audio is not None:
            self._apply_audio(update.audio, changes)
        voice = changes.get("voice", self.voice)
        changes["speaker"] = _speaker(voices, voice, self.model)
        return transcription.checked(dataclasses.replace(self, **changes), update)

    def _apply_beta_audio(self, update: SessionIn, given: set[str], changes: dict) -> None:
        for key, side in (("input_audio_format", "input"), ("output_audio_format", "output")):
            value = getattr(update, key)
            if key in given and value is not None and value != getattr(self, f"{side}_format"):
                changes[f"{side}_format"] = value
                g711 = value != audio_format.PCM16
                changes[f"{side}_rate"] = audio_format.G711_RATE if g711 else DEFAULT_RATE
        if "voice" in given and update.voice is not None:
            changes["voice"] = update.voice
        if "turn_detection" in given:
            changes["turn_detection"] = self._turn_detection(update.turn_detection)
        if "input_audio_transcription" in given:
            changes["transcription"] = update.input_audio_transcription

    def _apply_audio(self, audio: Any, changes: dict) -> None:
        if audio.input is not None:
            given = audio.input.model_fields_set
            if audio.input.format is not None:
                changes["input_format"], changes["input_rate"] = _format(
                    audio.input.format, "session.audio.input.format"
                )
            if "turn_detection" in given:
                changes["turn_detection"] = self._turn_detection(audio.input.turn_detection)
            if "transcription" in given:
                changes["transcription"] = audio.input.transcription
        if audio.output is not None:
            if audio.output.format is not None:
                changes["output_format"], changes["output_rate"] = _format(
                    audio.output.format, "session.audio.output.format"
                )
            if audio.output.voice is not None:
                changes["voice"] = audio.output.voice

    def _turn_detection(self, value: Any) -> TurnDetection | None:
        if value is None:
            return None
        if value.type != "server_vad":
            raise ProtocolError(
                "invalid_value",
                f"turn_detection.type '{value.type}' is not supported; use 'server_vad' or null",
                param="session.turn_detection.type",
            )
        base = self.turn_detection or TurnDetection()
        given = {
            name: getattr(value, name)
            for name in value.model_fields_set
            if name != "type" and getattr(value, name) is not None
        }
        return dataclasses.replace(base, **given)

    # ---- what a response uses

    def modality(self, modalities: tuple[str, ...] | None = None) -> OutputModality:
        chosen = set(modalities or self.output_modalities)
        if chosen == {"audio"}:
            return OutputModality.SPEECH
        if chosen == {"text"}:
            return OutputModality.TEXT
        return OutputModality.ARBITRARY

    def max_tokens(self, limit: int, override: int | str | None = None) -> int:
        value = override if override is not None else self.max_output_tokens
        return limit if value == "inf" else min(int(value), limit)

    # ---- rendering

    def render(self, dialect: str, session_id: str, expires_at: int) -> dict[str, Any]:
        if self.type == "transcription":
            return transcription.render_session(self, dialect, session_id, expires_at)
        if dialect == BETA:
            return self._render_beta(session_id, expires_at)
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": self.model,
            "expires_at": expires_at,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "audio": {
                "input": {
                    "format": audio_format.render_ga(self.input_format, self.input_rate),
                    "transcription": self.transcription,
                    "noise_reduction": None,
                    "turn_detection": self._render_turn_detection(),
                },
                "output": {
                    "format": audio_format.render_ga(self.output_format, self.output_rate),
                    "voice": self.voice,
                    "speed": 1.0,
                },
            },
            "temperature": self.temperature,
            "max_output_tokens": self.max_output_tokens,
            "tools": [],
            "tool_choice": "auto",
        }

    def _render_beta(self, session_id: str, expires_at: int) -> dict[str, Any]:
        return {
            "object": "realtime.session",
            "id": session_id,
            "model": self.model,
            "expires_at": expires_at,
            "modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "voice": self.voice,
            "input_audio_format": self.input_format,
            "output_audio_format": self.output_format,
            "input_audio_sample_rate": self.input_rate,
            "output_audio_sample_rate": self.output_rate,
            "input_audio_transcription": self.transcription,
            "turn_detection": self._render_turn_detection(),
            "temperature": self.temperature,
            "max_response_output_tokens": self.max_output_tokens,
            "tools": [],
            "tool_choice": "auto",
        }

    def _render_turn_detection(self) -> dict[str, Any] | None:
        return None if self.turn_detection is None else self.turn_detection.render()


def initial_config(model: str, voices: list[Voice]) -> SessionConfig:
    return SessionConfig(model=model, speaker=_speaker(voices, "alloy", model))


def _modalities(values: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


def _format(fmt: AudioFormatIn, param: str) -> tuple[str, int]:
    """(format name, rate) of a GA audio format."""
    name = audio_format.from_ga(fmt.type)
    if name != audio_format.PCM16:
        return name, audio_format.g711_rate(name, fmt.rate, f"{param}.rate")
    return name, _rate(fmt, param)


def _rate(fmt: AudioFormatIn, param: str) -> int:
    rate = DEFAULT_RATE if fmt.rate is None else fmt.rate
    try:
        check_sample_rate(rate, f"{param}.rate")
    except ValueError as error:
        raise ProtocolError("invalid_value", str(error), param=f"{param}.rate") from None
    return rate


def _speaker(voices: list[Voice], voice: str | int, model: str) -> int:
    try:
        return resolve_voice(voices, voice, model, param="session.audio.output.voice")
    except APIError as error:
        raise ProtocolError("invalid_value", error.message, param=error.param) from None
