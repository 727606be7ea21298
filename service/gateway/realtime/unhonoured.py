"""OpenAI Realtime fields a Spirit LM session does not honour, refused by name.

A client migrating from OpenAI must learn at once what it does not get, not from a session that
silently behaves otherwise (docs/realtime.md lists every field with its status). Each field
below is accepted only at the value that means what the session does anyway; anything else is
an ``error`` event (``invalid_request_error``, code ``unsupported_parameter``) whose `param`
names the field, and the update or response is not applied.

Spirit LM is a base speech LM: it has no tool calling (``tools``, ``tool_choice``), no reusable
prompts (``prompt``), no traces (``tracing``), no other ``include`` data, plays audio at one speed
and does no noise reduction; the history is always fitted by dropping the oldest items
(``truncation: "auto"``, conversation.py). A response speaks with the session's voice and
format; ``response.create`` may repeat them but not change them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.gateway.realtime import audio_format
from service.gateway.realtime.protocol import AudioIn, ProtocolError, ResponseIn, SessionIn

if TYPE_CHECKING:
    from service.gateway.realtime.config import SessionConfig

NO_TOOLS = "Spirit LM is a base speech LM and does not call tools"
TOOL_CHOICES = ("auto", "none")  # with no tools, both mean that no tool is called


def refuse(param: str, why: str) -> ProtocolError:
    return ProtocolError("unsupported_parameter", f"{param}: {why}", param=param)


def check_session(update: SessionIn) -> None:
    """Refuse the session.update fields the session cannot honour (see the module docstring)."""
    given = update.model_fields_set
    _check_tools(update.tools, update.tool_choice, "session")
    if update.include:
        raise refuse("session.include", "no extra output can be included; send [] or omit it")
    if "truncation" in given and update.truncation not in (None, "auto"):
        raise refuse(
            "session.truncation",
            "only 'auto' is supported (the oldest items are dropped to fit the context)",
        )
    if update.tracing is not None:
        raise refuse("session.tracing", "tracing is not available; send null or omit it")
    if update.prompt is not None:
        raise refuse("session.prompt", "reusable prompts are not available; use instructions")
    _check_speed(update.speed, "session.speed")
    if update.input_audio_noise_reduction is not None:
        raise refuse(
            "session.input_audio_noise_reduction", "noise reduction is not available; send null"
        )
    audio = update.audio
    if audio is not None and audio.input is not None and audio.input.noise_reduction is not None:
        raise refuse(
            "session.audio.input.noise_reduction", "noise reduction is not available; send null"
        )
    if audio is not None and audio.output is not None:
        _check_speed(audio.output.speed, "session.audio.output.speed")


def check_response(spec: ResponseIn, config: SessionConfig) -> None:
    """Refuse the response.create fields a response cannot honour."""
    _check_tools(spec.tools, spec.tool_choice, "response")
    if spec.prompt is not None:
        raise refuse("response.prompt", "reusable prompts are not available; use instructions")
    if spec.voice is not None:
        _check_voice(spec.voice, config, "response.voice")
    if spec.output_audio_format not in (None, config.output_format):
        raise refuse(
            "response.output_audio_format",
            f"a response uses the session's format ({config.output_format}); change it with "
            "session.update",
        )
    if spec.audio is not None:
        _check_response_audio(spec.audio, config)


def _check_tools(tools: list[Any] | None, choice: Any, where: str) -> None:
    if tools:
        raise refuse(f"{where}.tools", f"{NO_TOOLS}; send [] or omit it")
    if choice is not None and choice not in TOOL_CHOICES:
        raise refuse(f"{where}.tool_choice", f"{NO_TOOLS}; use 'auto' or 'none'")


def _check_speed(speed: float | None, param: str) -> None:
    if speed is not None and speed != 1.0:
        raise refuse(param, "audio is produced at its natural speed only; send 1.0")


def _check_voice(voice: str | int, config: SessionConfig, param: str) -> None:
    if voice != config.voice:
        raise refuse(
            param,
            f"a response speaks with the session's voice ({config.voice}); change it with "
            "session.update",
        )


def _check_response_audio(audio: AudioIn, config: SessionConfig) -> None:
    if audio.input is not None:
        raise refuse("response.audio.input", "a response has no input audio settings")
    output = audio.output
    if output is None:
        return
    if output.voice is not None:
        _check_voice(output.voice, config, "response.audio.output.voice")
    _check_speed(output.speed, "response.audio.output.speed")
    fmt = output.format
    if fmt is None:
        return
    name = audio_format.from_ga(fmt.type)
    rate_differs = name == audio_format.PCM16 and fmt.rate not in (None, config.output_rate)
    if name != config.output_format or rate_differs:
        raise refuse(
            "response.audio.output.format",
            "a response uses the session's output format "
            f"({audio_format.render_ga(config.output_format, config.output_rate)}); change it "
            "with session.update",
        )
