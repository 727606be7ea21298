"""`SpiritLM`: the blocking client."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from spiritlm_client import calls
from spiritlm_client.calls import AudioSource, Call, GenerateInput, transcript_text
from spiritlm_client.errors import (
    SpiritLMConnectionError,
    error_from_body,
    raise_for_status,
    raise_stream_error,
)
from spiritlm_client.sse import DONE, SSEDecoder
from spiritlm_client.types import (
    ChatDelta,
    ChatReply,
    Classification,
    GenerateEvent,
    Generation,
    Tokenized,
)


class SpiritLM:
    """Client of a spiritlm-serve gateway.

    `base_url` defaults to $SPIRITLM_BASE_URL, then http://127.0.0.1:8000; `api_key` to
    $SPIRITLM_API_KEY (none: no Authorization header). Use as a context manager, or `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 600.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = calls.base_url_from(base_url)
        self._http = http or httpx.Client(
            base_url=self.base_url,
            headers=calls.auth_headers(api_key),
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SpiritLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing

    def _send(self, call: Call) -> httpx.Response:
        try:
            response = self._http.request(**call.kwargs())
        except httpx.TransportError as error:
            raise SpiritLMConnectionError(f"{self.base_url}: {error!r}") from error
        raise_for_status(response.status_code, response.content)
        return response

    @contextmanager
    def _stream(self, call: Call) -> Iterator[httpx.Response]:
        try:
            with self._http.stream(**call.kwargs()) as response:
                if response.status_code >= 400:
                    raise error_from_body(response.status_code, response.read())
                yield response
        except httpx.TransportError as error:
            raise SpiritLMConnectionError(f"{self.base_url}: {error!r}") from error

    def _events(self, call: Call) -> Iterator[dict[str, Any]]:
        decoder = SSEDecoder()
        with self._stream(call) as response:
            for line in response.iter_lines():
                data = decoder.feed(line)
                if data is None:
                    continue
                if data == DONE:
                    return
                event = json.loads(data)
                raise_stream_error(event)
                yield event

    # ---- status

    def health(self) -> bool:
        """Whether the gateway answers its liveness check."""
        try:
            return self._http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> dict[str, Any]:
        """The readiness report: `status` is "ready" when LM and speech workers are healthy."""
        try:
            return self._http.get("/ready").json()
        except httpx.TransportError as error:
            raise SpiritLMConnectionError(f"{self.base_url}: {error!r}") from error

    def models(self) -> list[str]:
        payload = self._send(Call("GET", "/v1/models")).json()
        return [item["id"] for item in payload["data"]]

    # ---- audio

    def transcribe(
        self,
        file: AudioSource,
        *,
        model: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        response_format: str = "json",
        **extra: Any,
    ) -> str:
        """The transcript (json/verbose_json: its text; text/srt/vtt: the document)."""
        call = calls.transcribe(
            file,
            model=model,
            prompt=prompt,
            temperature=temperature,
            response_format=response_format,
            extra=extra,
        )
        response = self._send(call)
        return transcript_text(response.headers.get("content-type", ""), response.content)

    def speak(
        self,
        text: str,
        *,
        voice: str | int | None = None,
        format: str = "wav",
        model: str | None = None,
        sample_rate: int | None = None,
        **extra: Any,
    ) -> bytes:
        """The whole audio file of `text` spoken in `voice`."""
        chunks = self.iter_speak(
            text, voice=voice, format=format, model=model, sample_rate=sample_rate, **extra
        )
        return b"".join(chunks)

    def iter_speak(
        self,
        text: str,
        *,
        voice: str | int | None = None,
        format: str = "wav",
        model: str | None = None,
        sample_rate: int | None = None,
        **extra: Any,
    ) -> Iterator[bytes]:
        """The audio file's bytes as the gateway produces them (streamed synthesis)."""
        call = calls.speak(
            text, voice=voice, format=format, model=model, sample_rate=sample_rate, extra=extra
        )
        with self._stream(call) as response:
            yield from response.iter_bytes()

    # ---- generation

    def generate(
        self,
        inputs: Iterable[GenerateInput] | None = None,
        *,
        output_modality: str = "arbitrary",
        prompt: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        speaker: int | None = None,
        format: str | None = None,
        sample_rate: int | None = None,
        **extra: Any,
    ) -> Generation:
        """One interleaved generation (POST /v1/generate); sampling options go in `extra`."""
        call = calls.generate(
            inputs,
            output_modality=output_modality,
            prompt=prompt,
            model=model,
            max_tokens=max_tokens,
            speaker=speaker,
            format=format,
            sample_rate=sample_rate,
            stream=False,
            extra=extra,
        )
        return Generation.from_json(self._send(call).json())

    def iter_generate(
        self,
        inputs: Iterable[GenerateInput] | None = None,
        *,
        output_modality: str = "arbitrary",
        prompt: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        speaker: int | None = None,
        sample_rate: int | None = None,
        **extra: Any,
    ) -> Iterator[GenerateEvent]:
        """The same generation as events while it runs (audio as raw pcm16)."""
        call = calls.generate(
            inputs,
            output_modality=output_modality,
            prompt=prompt,
            model=model,
            max_tokens=max_tokens,
            speaker=speaker,
            format=None,
            sample_rate=sample_rate,
            stream=True,
            extra=extra,
        )
        for event in self._events(call):
            yield GenerateEvent.from_json(event)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        audio: bool = False,
        voice: str | int | None = None,
        format: str = "wav",
        max_tokens: int | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        **extra: Any,
    ) -> ChatReply:
        """A chat completion; `audio=True` answers in speech (`reply.audio` in `format`)."""
        call = calls.chat(
            messages,
            model=model,
            audio=audio,
            voice=voice,
            format=format,
            max_tokens=max_tokens,
            stop=stop,
            session_id=session_id,
            stream=False,
            extra=extra,
        )
        return ChatReply.from_json(self._send(call).json())

    def iter_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str | None = None,
        audio: bool = False,
        voice: str | int | None = None,
        format: str = "pcm16",
        max_tokens: int | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        **extra: Any,
    ) -> Iterator[ChatDelta]:
        """The chat reply as it streams; `ChatReply.from_deltas` adds the deltas up."""
        call = calls.chat(
            messages,
            model=model,
            audio=audio,
            voice=voice,
            format=format,
            max_tokens=max_tokens,
            stop=stop,
            session_id=session_id,
            stream=True,
            extra=extra,
        )
        for chunk in self._events(call):
            yield ChatDelta.from_chunk(chunk)

    # ---- units

    def classify(
        self, file: AudioSource, labels: list[str] | None = None, *, model: str | None = None
    ) -> Classification:
        """Few-shot speech classification among `labels` (default: the gateway bank's)."""
        return Classification.from_json(
            self._send(calls.classify(file, labels=labels, model=model)).json()
        )

    def tokenize(self, file: AudioSource, *, model: str | None = None) -> Tokenized:
        """Speech units and the Spirit LM token string of an audio file."""
        return Tokenized.from_json(self._send(calls.tokenize(file, model=model)).json())

    def detokenize(
        self,
        tokens: str | Mapping[str, Any],
        *,
        model: str | None = None,
        speaker: str | int | None = None,
        format: str = "wav",
        sample_rate: int | None = None,
        duration_prediction: bool = True,
    ) -> bytes:
        """Audio of a token string (or a units dict as `tokenize` returns it)."""
        call = calls.detokenize(
            tokens,
            model=model,
            speaker=speaker,
            format=format,
            sample_rate=sample_rate,
            duration_prediction=duration_prediction,
        )
        return self._send(call).content
