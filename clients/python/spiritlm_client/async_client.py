"""`AsyncSpiritLM`: the asyncio client (same calls as `SpiritLM`, awaited)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
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


class AsyncSpiritLM:
    """Async client of a spiritlm-serve gateway; see `SpiritLM` for the arguments."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 600.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = calls.base_url_from(base_url)
        self._http = http or httpx.AsyncClient(
            base_url=self.base_url,
            headers=calls.auth_headers(api_key),
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSpiritLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- plumbing

    async def _send(self, call: Call) -> httpx.Response:
        try:
            response = await self._http.request(**call.kwargs())
        except httpx.TransportError as error:
            raise SpiritLMConnectionError(f"{self.base_url}: {error!r}") from error
        raise_for_status(response.status_code, response.content)
        return response

    @asynccontextmanager
    async def _stream(self, call: Call) -> AsyncIterator[httpx.Response]:
        try:
            async with self._http.stream(**call.kwargs()) as response:
                if response.status_code >= 400:
                    raise error_from_body(response.status_code, await response.aread())
                yield response
        except httpx.TransportError as error:
            raise SpiritLMConnectionError(f"{self.base_url}: {error!r}") from error

    async def _events(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        decoder = SSEDecoder()
        async with self._stream(call) as response:
            async for line in response.aiter_lines():
                data = decoder.feed(line)
                if data is None:
                    continue
                if data == DONE:
                    return
                event = json.loads(data)
                raise_stream_error(event)
                yield event

    # ---- status

    async def health(self) -> bool:
        try:
            return (await self._http.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    async def ready(self) -> dict[str, Any]:
        try:
            return (await self._http.get("/ready")).json()
        except httpx.TransportError as error:
            raise SpiritLMConnectionError(f"{self.base_url}: {error!r}") from error

    async def models(self) -> list[str]:
        payload = (await self._send(Call("GET", "/v1/models"))).json()
        return [item["id"] for item in payload["data"]]

    # ---- audio

    async def transcribe(
        self,
        file: AudioSource,
        *,
        model: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        response_format: str = "json",
        **extra: Any,
    ) -> str:
        call = calls.transcribe(
            file,
            model=model,
            prompt=prompt,
            temperature=temperature,
            response_format=response_format,
            extra=extra,
        )
        response = await self._send(call)
        return transcript_text(response.headers.get("content-type", ""), response.content)

    async def speak(
        self,
        text: str,
        *,
        voice: str | int | None = None,
        format: str = "wav",
        model: str | None = None,
        sample_rate: int | None = None,
        **extra: Any,
    ) -> bytes:
        chunks = self.iter_speak(
            text, voice=voice, format=format, model=model, sample_rate=sample_rate, **extra
        )
        return b"".join([chunk async for chunk in chunks])

    async def iter_speak(
        self,
        text: str,
        *,
        voice: str | int | None = None,
        format: str = "wav",
        model: str | None = None,
        sample_rate: int | None = None,
        **extra: Any,
    ) -> AsyncIterator[bytes]:
        call = calls.speak(
            text, voice=voice, format=format, model=model, sample_rate=sample_rate, extra=extra
        )
        async with self._stream(call) as response:
            async for chunk in response.aiter_bytes():
                yield chunk

    # ---- generation

    async def generate(
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
        return Generation.from_json((await self._send(call)).json())

    async def iter_generate(
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
    ) -> AsyncIterator[GenerateEvent]:
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
        async for event in self._events(call):
            yield GenerateEvent.from_json(event)

    async def chat(
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
        return ChatReply.from_json((await self._send(call)).json())

    async def iter_chat(
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
    ) -> AsyncIterator[ChatDelta]:
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
        async for chunk in self._events(call):
            yield ChatDelta.from_chunk(chunk)

    # ---- units

    async def classify(
        self, file: AudioSource, labels: list[str] | None = None, *, model: str | None = None
    ) -> Classification:
        """Few-shot speech classification among `labels` (default: the gateway bank's)."""
        response = await self._send(calls.classify(file, labels=labels, model=model))
        return Classification.from_json(response.json())

    async def tokenize(self, file: AudioSource, *, model: str | None = None) -> Tokenized:
        response = await self._send(calls.tokenize(file, model=model))
        return Tokenized.from_json(response.json())

    async def detokenize(
        self,
        tokens: str | Mapping[str, Any],
        *,
        model: str | None = None,
        speaker: str | int | None = None,
        format: str = "wav",
        sample_rate: int | None = None,
        duration_prediction: bool = True,
    ) -> bytes:
        call = calls.detokenize(
            tokens,
            model=model,
            speaker=speaker,
            format=format,
            sample_rate=sample_rate,
            duration_prediction=duration_prediction,
        )
        return (await self._send(call)).content
