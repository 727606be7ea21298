"""Results of the SDK calls, parsed from the gateway's JSON."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


@dataclass
class Segment:
    """One output segment of /v1/generate: text, or speech with its tokens and audio."""

    type: str  # "text" | "speech"
    text: str = ""
    tokens: str = ""
    audio: bytes = b""
    format: str | None = None
    sample_rate: int | None = None
    seconds: float = 0.0

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Segment:
        if item["type"] == "text":
            return cls("text", text=item["text"])
        return cls(
            "speech",
            tokens=item["tokens"],
            audio=_b64(item.get("audio")),
            format=item.get("format"),
            sample_rate=item.get("sample_rate"),
            seconds=float(item.get("seconds", 0.0)),
        )


@dataclass
class Generation:
    id: str
    model: str
    prompt: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    finish_reason: str | None
    segments: list[Segment]
    usage: dict[str, int]
    dropped: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Generation:
        return cls(
            id=payload.get("id", ""),
            model=payload["model"],
            prompt=payload["prompt"],
            prompt_token_ids=list(payload["prompt_token_ids"]),
            output_token_ids=list(payload["output_token_ids"]),
            finish_reason=payload.get("finish_reason"),
            segments=[Segment.from_json(item) for item in payload.get("segments", [])],
            usage=dict(payload.get("usage", {})),
            dropped=list(payload.get("dropped", [])),
        )

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments if segment.type == "text")


@dataclass
class GenerateEvent:
    """One streamed event of /v1/generate.

    `type` is ``segment.start`` (`kind`), ``text.delta`` (`text`), ``speech.tokens``
    (`tokens`), ``audio.delta`` (`audio`: raw pcm16 mono at `sample_rate`) or ``done``
    (`generation`: ids, usage and finish reason; its `segments` are empty).
    """

    type: str
    index: int | None = None
    kind: str | None = None
    text: str = ""
    tokens: str = ""
    audio: bytes = b""
    sample_rate: int | None = None
    generation: Generation | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerateEvent:
        kind = data["type"]
        event = cls(kind, index=data.get("index"))
        if kind == "segment.start":
            event.kind = data["kind"]
        elif kind == "text.delta":
            event.text = data["delta"]
        elif kind == "speech.tokens":
            event.tokens = data["tokens"]
        elif kind == "audio.delta":
            event.audio = _b64(data["audio"])
            event.sample_rate = data.get("sample_rate")
        elif kind == "done":
            event.generation = Generation.from_json({**data, "segments": []})
        return event


@dataclass
class ChatDelta:
    """One streamed chunk of a chat reply."""

    text: str = ""
    audio: bytes = b""
    audio_id: str | None = None
    expires_at: int | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None

    @classmethod
    def from_chunk(cls, chunk: dict[str, Any]) -> ChatDelta:
        delta = cls(usage=chunk.get("usage"))
        for choice in chunk.get("choices") or []:
            body = choice.get("delta") or {}
            delta.text += body.get("content") or ""
            audio = body.get("audio") or {}
            delta.audio += _b64(audio.get("data"))
            delta.audio_id = audio.get("id") or delta.audio_id
            delta.expires_at = audio.get("expires_at") or delta.expires_at
            delta.finish_reason = choice.get("finish_reason") or delta.finish_reason
        return delta


@dataclass
class ChatReply:
    model: str
    text: str | None
    audio: bytes | None = None
    audio_id: str | None = None
    expires_at: int | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ChatReply:
        choice = payload["choices"][0]
        message = choice["message"]
        audio = message.get("audio") or None
        return cls(
            model=payload["model"],
            text=message.get("content"),
            audio=_b64(audio["data"]) if audio else None,
            audio_id=audio["id"] if audio else None,
            expires_at=audio.get("expires_at") if audio else None,
            finish_reason=choice.get("finish_reason"),
            usage=dict(payload.get("usage") or {}),
        )

    @classmethod
    def from_deltas(cls, deltas: Iterable[ChatDelta], model: str = "") -> ChatReply:
        """The reply a stream of deltas adds up to."""
        reply = cls(model=model, text="")
        audio = bytearray()
        for delta in deltas:
            reply.text = (reply.text or "") + delta.text
            audio += delta.audio
            reply.audio_id = delta.audio_id or reply.audio_id
            reply.expires_at = delta.expires_at or reply.expires_at
            reply.finish_reason = delta.finish_reason or reply.finish_reason
            reply.usage = delta.usage or reply.usage
        if reply.audio_id is not None:
            reply.audio, reply.text = bytes(audio), None
        return reply

    def as_message(self) -> dict[str, Any]:
        """This reply as the assistant message of the next request's history.

        A spoken reply is referenced by its audio id, so the gateway rebuilds it as the speech
        tokens it generated (valid until `expires_at`).
        """
        if self.audio_id is not None:
            return {"role": "assistant", "audio": {"id": self.audio_id}}
        return {"role": "assistant", "content": self.text or ""}


@dataclass
class Classification:
    """The most likely label, and every candidate's log-probability, most likely first."""

    label: str
    scores: list[tuple[str, float, float]]  # (label, logprob, probability)
    shots: int

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Classification:
        scores = [
            (item["label"], float(item["logprob"]), float(item["probability"]))
            for item in payload["scores"]
        ]
        return cls(label=payload["label"], scores=scores, shots=int(payload["shots"]))


@dataclass
class Tokenized:
    model: str
    tokens: str
    units: dict[str, str]
    seconds: float

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Tokenized:
        return cls(
            model=payload["model"],
            tokens=payload["tokens"],
            units=dict(payload["units"]),
            seconds=float(payload["seconds"]),
        )
