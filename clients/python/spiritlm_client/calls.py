"""The HTTP requests of each SDK call, shared by the sync and async clients (no I/O here)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
BASE_URL_ENV = "SPIRITLM_BASE_URL"
API_KEY_ENV = "SPIRITLM_API_KEY"

AudioSource = str | os.PathLike | bytes | bytearray | IO[bytes]
# A generate input: "text", ("text", "..."), ("speech", AudioSource), ("tokens", "[Hu1]..."),
# or a dict in the API's own shape ({"type": "speech", "audio": base64}).
GenerateInput = str | tuple[str, Any] | Mapping[str, Any]


def base_url_from(value: str | None) -> str:
    return (value or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def auth_headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    data: dict[str, str | list[str]] | None = None
    headers: dict[str, str] | None = None

    def kwargs(self) -> dict[str, Any]:
        """Arguments of httpx's `request`/`stream`."""
        out: dict[str, Any] = {"method": self.method, "url": self.path}
        for name in ("json", "params", "files", "data", "headers"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def read_audio(source: AudioSource) -> tuple[str, bytes]:
    """(file name, bytes) of a path, bytes or binary file object."""
    if isinstance(source, bytes | bytearray):
        return "audio", bytes(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return path.name, path.read_bytes()
    data = source.read()
    if not isinstance(data, bytes):
        raise TypeError("audio file objects must be opened in binary mode")
    return Path(str(getattr(source, "name", "audio"))).name, data


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


# ---- calls ------------------------------------------------------------------------------------


def transcribe(
    file: AudioSource,
    *,
    model: str | None,
    prompt: str | None,
    temperature: float | None,
    response_format: str,
    extra: Mapping[str, Any],
) -> Call:
    name, data = read_audio(file)
    fields = _without_none({"model": model, "prompt": prompt, "temperature": temperature, **extra})
    fields["response_format"] = response_format
    return Call(
        "POST",
        "/v1/audio/transcriptions",
        files={"file": (name, data)},
        data={key: str(value) for key, value in fields.items()},
    )


def classify(file: AudioSource, *, labels: list[str] | None, model: str | None) -> Call:
    name, data = read_audio(file)
    fields: dict[str, Any] = {"labels": list(labels)} if labels else {}
    if model:
        fields["model"] = model
    return Call("POST", "/v1/audio/classifications", files={"file": (name, data)}, data=fields)


def speak(
    text: str,
    *,
    voice: str | int | None,
    format: str,
    model: str | None,
    sample_rate: int | None,
    extra: Mapping[str, Any],
) -> Call:
    body = _without_none(
        {
            "input": text,
            "voice": None if voice is None else str(voice),
            "response_format": format,
            "model": model,
            "sample_rate": sample_rate,
            **extra,
        }
    )
    return Call("POST", "/v1/audio/speech", json=body)


def generate_input(item: GenerateInput) -> dict[str, Any]:
    if isinstance(item, str):
        return {"type": "text", "text": item}
    if isinstance(item, Mapping):
        return dict(item)
    kind, content = item
    if kind == "text":
        return {"type": "text", "text": str(content)}
    if kind == "speech":
        return {"type": "speech", "audio": base64.b64encode(read_audio(content)[1]).decode()}
    if kind == "tokens":
        return {"type": "speech", "tokens": str(content)}
    raise ValueError(f"generate input kind {kind!r}: use 'text', 'speech' or 'tokens'")


def generate(
    inputs: Iterable[GenerateInput] | None,
    *,
    output_modality: str,
    prompt: str | None,
    model: str | None,
    max_tokens: int | None,
    speaker: int | None,
    format: str | None,
    sample_rate: int | None,
    stream: bool,
    extra: Mapping[str, Any],
) -> Call:
    body = _without_none(
        {
            "inputs": [generate_input(item) for item in inputs or []],
            "prompt": prompt,
            "output_modality": output_modality,
            "model": model,
            "max_tokens": max_tokens,
            "speaker": speaker,
            "response_format": format,
            "sample_rate": sample_rate,
            "stream": stream,
            **extra,
        }
    )
    return Call("POST", "/v1/generate", json=body)


def chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    model: str | None,
    audio: bool,
    voice: str | int | None,
    format: str,
    max_tokens: int | None,
    stop: str | list[str] | None,
    session_id: str | None,
    stream: bool,
    extra: Mapping[str, Any],
) -> Call:
    body = _without_none(
        {
            "messages": [dict(message) for message in messages],
            "model": model,
            "max_tokens": max_tokens,
            "stop": stop,
            **extra,
        }
    )
    if audio:
        body["modalities"] = ["text", "audio"]
        body["audio"] = _without_none({"voice": voice, "format": format})
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    headers = {"X-Session-Id": session_id} if session_id else None
    return Call("POST", "/v1/chat/completions", json=body, headers=headers)


def user_audio_message(file: AudioSource, text: str | None = None) -> dict[str, Any]:
    """A user chat message carrying an audio file (and optional text before it)."""
    name, data = read_audio(file)
    suffix = Path(name).suffix.lstrip(".").lower() or "wav"
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts.append(
        {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(data).decode(), "format": suffix},
        }
    )
    return {"role": "user", "content": parts}


def tokenize(file: AudioSource, *, model: str | None) -> Call:
    name, data = read_audio(file)
    fields = {"model": model} if model else None
    return Call("POST", "/v1/speech/tokenize", files={"file": (name, data)}, data=fields)


def detokenize(
    tokens: str | Mapping[str, Any],
    *,
    model: str | None,
    speaker: str | int | None,
    format: str,
    sample_rate: int | None,
    duration_prediction: bool,
) -> Call:
    source = {"tokens": tokens} if isinstance(tokens, str) else {"units": dict(tokens)}
    body = _without_none(
        {
            **source,
            "model": model,
            "speaker": speaker,
            "response_format": format,
            "sample_rate": sample_rate,
            "duration_prediction": duration_prediction,
        }
    )
    return Call("POST", "/v1/speech/detokenize", json=body)


def transcript_text(content_type: str, body: bytes) -> str:
    """A transcription response: json/verbose_json -> its text; text/srt/vtt -> the document."""
    if content_type.startswith("application/json"):
        return str(json.loads(body)["text"])
    return body.decode("utf-8")
