"""What the API routes call: prompt preparation, LM streaming and speech synthesis on the pools.

`Engine.run` streams one generation as `Output` events. Speech segments are synthesised while
they are generated: each speech segment opens a streaming session on a speech worker, its tokens
are forwarded as the LM produces them, and audio chunks come back into the same ordered queue as
the text deltas. Cancelling the consumer cancels everything: the vLLM request (its HTTP stream is
closed) and the vocoder session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

import httpx

from service.audio.decode import DecodedAudio
from service.checkpoints.layout import EXPRESSIVE, CheckpointLayout
from service.gateway.errors import APIError
from service.gateway.models.aliases import target as alias_target
from service.gateway.pools import Endpoint, NoHealthyWorker, WorkerPool
from service.lm.client import (
    LMClient,
    LMError,
    LMMalformedAnswer,
    LMRequestFailed,
    SamplingParams,
    Usage,
)
from service.lm.ending import Ending
from service.lm.generation import GenerationResult, Generator, PreparedPrompt, prepare_prompt
from service.lm.parsing import Done, ModalitySwitch, SpeechTokens, TextDelta
from service.lm.prompt import OutputModality
from service.lm.tokenizer import SpiritTokenizer
from service.speech_worker.client import (
    EncodeResult,
    SpeechClient,
    SpeechWorkerError,
    SpeechWorkerMalformedAnswer,
    SpeechWorkerUnavailable,
)
from service.units.tokens import SPEECH_TOKEN

# Outputs produced ahead of a consumer that does not take them. Audio items are vocoder chunks
# (up to a second of audio, ~100 kB at 48 kHz), so this is what bounds the memory a client that
# stops reading can hold in the gateway; beyond it, the LM and vocoder streams wait.
OUTPUTS_AHEAD = 16

T = TypeVar("T")

log = logging.getLogger("spiritlm.gateway.engine")


@dataclass(frozen=True)
class SegmentStart:
    kind: str  # "text" | "speech"
    index: int


@dataclass(frozen=True)
class TextOut:
    text: str
    index: int
    # Output tokens generated when this text was released: the text of a stream's deltas is
    # that of its output ids in consecutive ranges (a delta's logprobs, audio/transcription.py).
    output_tokens: int = 0


@dataclass(frozen=True)
class AudioOut:
    pcm16: bytes  # little-endian mono at the requested sample rate
    index: int


@dataclass(frozen=True)
class SpeechTokensOut:
    tokens: str
    index: int


@dataclass
class Finished:
    prepared: PreparedPrompt
    result: GenerationResult
    dropped: list[dict[str, str]] = field(default_factory=list)
    first_token_at: float | None = None


Output = SegmentStart | TextOut | AudioOut | SpeechTokensOut | Finished


class Engine:
    """Shared by all routes of one gateway."""

    def __init__(
        self,
        layout: CheckpointLayout,
        lm_pool: WorkerPool,
        speech_pool: WorkerPool,
        *,
        default_model: str,
        max_tokens_limit: int,
        model_aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.layout = layout
        self.model_aliases = dict(model_aliases or {})
        self.lm_pool = lm_pool
        self.speech_pool = speech_pool
        self.default_model = default_model
        self.max_tokens_limit = max_tokens_limit
        self._tokenizers: dict[str, SpiritTokenizer] = {}
        self._speech_clients: dict[str, SpeechClient] = {}
        speech_pool.on_removed = self._forget_speech_client
        self._silence_units: dict[str, frozenset[int]] = {}
        # One connection pool for all LM requests; generations can run for minutes.
        self._lm_http = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0))

    def speech_client(self, url: str) -> SpeechClient:
        """One client (one connection pool) per speech worker endpoint, with the pool's
        internal credential."""
        if url not in self._speech_clients:
            self._speech_clients[url] = SpeechClient(url, api_key=self.speech_pool.api_key)
        return self._speech_clients[url]

    async def _forget_speech_client(self, url: str) -> None:
        """The speech endpoint at `url` left its pool (a scaled-down pod): close its client."""
        client = self._speech_clients.pop(url, None)
        if client is not None:
            await client.aclose()

    def lm_client(self, endpoint: Endpoint, model: str) -> LMClient:
        """A client of one LM replica on the shared connection pool, with the pool's internal
        credential."""
        return LMClient(endpoint.url, model, api_key=self.lm_pool.api_key, http=self._lm_http)

    async def aclose(self) -> None:
        await self._lm_http.aclose()
        for client in self._speech_clients.values():
            await client.aclose()
        self._speech_clients.clear()

    # ---- models ---------------------------------------------------------------------------

    @cached_property
    def known_models(self) -> list[str]:
        from service.checkpoints.layout import VARIANTS

        return [
            name for name in VARIANTS if (self.layout.lm_dir(name) / "tokenizer.model").is_file()
        ]

    def served_models(self) -> list[str]:
        """Models some healthy LM worker serves (all known models when none reported yet)."""
        reported = {m for e in self.lm_pool.healthy_endpoints() for m in e.models}
        return [m for m in self.known_models if m in reported] or [self.default_model]

    def resolve_model(self, name: str | None) -> str:
        """The variant a request's `model` names: a variant, an alias of one (the
        `model_aliases` setting, service/gateway/models/aliases.py) or, unset, the default.
        Any other name is a 404: no request silently gets a model it did not ask for."""
        if not name:
            return self.default_model
        model = alias_target(name, self.model_aliases, self.default_model)
        if model in self.known_models:
            return model
        names = ", ".join([*self.known_models, *self.model_aliases])
        what = f"is an alias of '{model}', which " if name in self.model_aliases else ""
        raise APIError(
            404,
            f"model '{name}' {what}does not exist here; available: {names}",
            param="model",
            code="model_not_found",
        )

    def tokenizer(self, model: str) -> SpiritTokenizer:
        if model not in self._tokenizers:
            self._tokenizers[model] = SpiritTokenizer.from_dir(self.layout.lm_dir(model))
        return self._tokenizers[model]

    async def load_tokenizers(self) -> None:
        """Loads the served models' tokenizers in a thread at start-up, so that no request loads
        one on the event loop; a tokenizer that fails to load fails its first request instead."""
        for model in self.served_models():
            if model in self.known_models:
                try:
                    await asyncio.to_thread(self.tokenizer, model)
                except Exception as error:  # noqa: BLE001
                    log.warning("tokenizer of %s not loaded at start-up: %s", model, error)

    def served_model(self, name: str | None) -> str:
        """The model a request names, which an LM worker must serve (404 otherwise)."""
        model = self.resolve_model(name)
        served = self.served_models()
        if model not in served:
            raise APIError(
                404,
                f"model '{model}' is not served by this gateway; served: {', '.join(served)}",
                param="model",
                code="model_not_found",
            )
        return model

    def check_max_tokens(self, max_tokens: int) -> int:
        if max_tokens > self.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens {max_tokens} exceeds the limit of {self.max_tokens_limit}",
                param="max_tokens",
            )
        return max_tokens

    def max_tokens_or(self, requested: int | None, default: int) -> int:
        """A requested max_tokens must be within the limit; the default budget is capped to it."""
        if requested is not None:
            return self.check_max_tokens(requested)
        return min(default, self.max_tokens_limit)

    # ---- speech worker ----------------------------------------------------------------------

    async def encode(
        self,
        audio: bytes | DecodedAudio,
        model: str,
        keep_ms: tuple[int, int | None] | None = None,
        *,
        ahead: bool = False,
        realtime: bool = False,
    ) -> EncodeResult:
        """Audio file bytes, or an upload already decoded (service/gateway/uploads.py), -> units
        (of the `keep_ms` stretch only, when given); retried on another speech worker if one is
        unreachable. `ahead`: nobody waits for it yet; `realtime`: a realtime conversation's
        turn (SpeechClient.encode)."""
        return await self._with_speech_worker(
            lambda client: client.encode(audio, model, keep_ms, ahead=ahead, realtime=realtime)
        )

    async def decode(self, **request: object) -> bytes:
        return await self._with_speech_worker(lambda client: client.decode(**request))

    async def silence_units(self, model: str) -> frozenset[int]:
        """The HuBERT units that are silence for `model`, learnt by the speech worker."""
        if model not in self._silence_units:
            units = await self._with_speech_worker(lambda client: client.silence_units(model))
            self._silence_units[model] = units
        return self._silence_units[model]

    async def _with_speech_worker(self, call: Callable[[SpeechClient], Awaitable[T]]) -> T:
        return await _on_some_worker(
            self.speech_pool,
            lambda endpoint: call(self.speech_client(endpoint.url)),
            _speech_failure,
        )

    # ---- generation -------------------------------------------------------------------------

    async def prepare(
        self, prompt: str, modality: OutputModality | str, model: str
    ) -> PreparedPrompt:
        """Tokenizes the prompt in a thread: request-sized CPU work stays off the event loop."""
        tokenizer = self.tokenizer(model)
        return await asyncio.to_thread(
            prepare_prompt, tokenizer, prompt, modality, expressive=model == EXPRESSIVE
        )

    async def run(
        self,
        prepared: PreparedPrompt,
        params: SamplingParams,
        model: str,
        *,
        speaker: int = 2,
        sample_rate: int = 16000,
        synthesize: bool = True,
        affinity: str | None = None,
        result: GenerationResult | None = None,
        speech_prefix: Sequence[str] = (),
        ending: Ending | None = None,
    ) -> AsyncIterator[Output]:
        """Stream one generation, cut where `ending` says; audio from speech workers when
        `synthesize`.

        `result`, when given, is filled in as tokens arrive, so a caller that stops early
        still knows how many tokens were generated. `speech_prefix`
        tokens (e.g. a forced ``[St5]`` that ends the prompt) go to the vocoder at the start of
        every speech segment, since the generated tokens that follow them depend on them.
        """
        queue: asyncio.Queue[Output | None | BaseException] = asyncio.Queue(OUTPUTS_AHEAD)
        finished = Finished(prepared, result if result is not None else GenerationResult())
        producer = asyncio.create_task(
            self._produce(
                queue,
                finished,
                params,
                model,
                _Voice(speaker, sample_rate, tuple(speech_prefix)),
                synthesize,
                affinity,
                ending or Ending(),
            )
        )
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            producer.cancel()
            # asyncio.wait, not `await producer`: when the consumer itself is being cancelled
            # (client gone; anyio re-delivers cancellation on every await), awaiting the task
            # directly would forward each cancellation into it and break its cleanup, leaving
            # the LM connection open and vLLM generating.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({producer})

    async def prompt_logprobs(self, prompt_ids: Sequence[int], model: str) -> list[float | None]:
        """Each prompt token's log-probability, from one LM replica (retried on another)."""

        async def call(endpoint: Endpoint) -> list[float | None]:
            client = self.lm_client(endpoint, model)
            return await client.prompt_logprobs(prompt_ids)

        return await _on_some_worker(self.lm_pool, call, _lm_failure, model=model)

    async def _produce(
        self,
        queue: asyncio.Queue,
        finished: Finished,
        params: SamplingParams,
        model: str,
        voice: _Voice,
        synthesize: bool,
        affinity: str | None,
        ending: Ending,
    ) -> None:
        """Run one generation into `queue`; an error is handed to the consumer, which raises it."""
        segment = _SegmentState()

        async def call(endpoint: Endpoint) -> None:
            await self._stream_from_lm(
                endpoint, queue, finished, params, model, voice, synthesize, ending, segment
            )

        def nothing_sent() -> bool:
            # Retrying on another replica is safe only while nothing has reached the client.
            return not finished.result.output_ids and segment.index < 0

        try:
            await _on_some_worker(
                self.lm_pool,
                call,
                _lm_failure,
                may_retry=nothing_sent,
                model=model,
                affinity=affinity,
            )
            await segment.abort()
            await queue.put(finished)
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            await queue.put(error)
        finally:
            await segment.abort()

    async def _stream_from_lm(
        self,
        endpoint: Endpoint,
        queue: asyncio.Queue,
        finished: Finished,
        params: SamplingParams,
        model: str,
        voice: _Voice,
        synthesize: bool,
        ending: Ending,
        segment: _SegmentState,
    ) -> None:
        """One try on the LM replica at `endpoint`; its LMErrors are mapped by the caller."""
        prepared = finished.prepared
        client = self.lm_client(endpoint, model)
        generator = Generator(self.tokenizer(model), client, expressive=model == EXPRESSIVE)
        try:
            async for event in generator.stream(prepared, params, finished.result, ending):
                if finished.first_token_at is None:
                    finished.first_token_at = time.perf_counter()
                if isinstance(event, ModalitySwitch):
                    await segment.close()
                    segment.index += 1
                    await queue.put(SegmentStart(event.to, segment.index))
                    if event.to == "speech" and synthesize:
                        await segment.open_speech(self, queue, model, voice)
                elif isinstance(event, TextDelta):
                    produced = len(finished.result.output_ids)
                    await queue.put(TextOut(event.text, segment.index, produced))
                elif isinstance(event, SpeechTokens):
                    if not event.context:
                        await queue.put(SpeechTokensOut("".join(event.tokens), segment.index))
                    await segment.send(single_tokens(event.tokens), event.context)
                elif isinstance(event, Done):
                    finished.dropped = [
                        {"tokens": d.tokens, "reason": d.reason} for d in event.dropped
                    ]
            await segment.close()
        finally:
            await client.aclose()


# ---- worker errors and retries


def _speech_api_error(
    error: SpeechWorkerError | SpeechWorkerUnavailable, *, what: str = "unavailable"
) -> APIError:
    """A refusal (bad speaker, unknown model, ...) keeps the worker's status; an unreachable
    worker or a broken connection is a 503. What went wrong (worker URLs, exception text) is
    logged, never sent to the client."""
    if isinstance(error, SpeechWorkerMalformedAnswer):
        log.warning("speech worker sent a malformed answer: %s", error)
        return APIError(502, "speech worker sent a malformed answer")
    if isinstance(error, SpeechWorkerUnavailable):
        log.warning("speech worker %s: %s", what, error)
        return APIError(503, f"speech worker {what}")
    return APIError(error.status, error.message, param=error.param)


def _speech_failure(error: Exception) -> tuple[APIError, bool] | None:
    """`_on_some_worker`'s classification of speech worker errors: only unreachable ones retry."""
    if isinstance(error, (SpeechWorkerError, SpeechWorkerUnavailable)):
        unreachable = isinstance(error, SpeechWorkerUnavailable) and not isinstance(
            error, SpeechWorkerMalformedAnswer
        )
        return _speech_api_error(error), unreachable
    return None


def _lm_failure(error: Exception) -> tuple[APIError, bool] | None:
    """`_on_some_worker`'s classification of LM worker errors.

    A 4xx is the request's fault (vLLM refused it): it keeps its status and vLLM's message,
    the worker is fine. A failure vLLM reports inside its stream is this request's too (a 502;
    the worker answered, so it stays in the pool). Anything else (a 5xx, an unreachable worker)
    means the worker failed, and is a 503. Details (worker URL, exception text) are logged, not
    sent.
    """
    if not isinstance(error, LMError):
        return None
    if error.status < 500:
        return APIError(error.status, str(error)), False
    if isinstance(error, LMRequestFailed):
        log.warning("LM worker failed a request: %s", error)
        return APIError(502, "the LM worker failed to run this request"), False
    if isinstance(error, LMMalformedAnswer):
        # Not a failure to reach it: no retry elsewhere; a 502 that names the role.
        log.warning("LM worker sent a malformed answer: %s", error)
        return APIError(502, "LM worker sent a malformed answer"), False
    log.warning("LM worker failed: %s", error)
    return APIError(503, "LM worker unavailable"), True


async def _on_some_worker(
    pool: WorkerPool,
    call: Callable[[Endpoint], Awaitable[T]],
    classify: Callable[[Exception], tuple[APIError, bool] | None],
    *,
    may_retry: Callable[[], bool] = lambda: True,
    model: str | None = None,
    affinity: str | None = None,
) -> T:
    """`call` on one worker of `pool`, tried on another when a worker fails.

    `classify` turns an error of `call` into the APIError the client gets and whether the
    worker failed (errors it returns None for pass through unchanged). A failed worker is
    ejected from the pool, and the call goes to another one while `may_retry()` holds, at most
    once per endpoint. No healthy worker is a 503.
    """
    attempts = max(1, len(pool.endpoints))
    for attempt in range(attempts):
        try:
            async with pool.use(model=model, affinity=affinity) as endpoint:
                try:
                    return await call(endpoint)
                except Exception as error:
                    classified = classify(error)
                    if classified is None:
                        raise
                    api_error, worker_failed = classified
                    if worker_failed:
                        pool.mark_failed(endpoint)
                        if attempt < attempts - 1 and may_retry():
                            continue
                    raise api_error from error
        except NoHealthyWorker as error:
            raise APIError(503, str(error)) from error
    raise AssertionError("unreachable: the last attempt returns or raises")


@dataclass(frozen=True)
class _Voice:
    """How speech segments are synthesised."""

    speaker: int
    sample_rate: int
    prefix: tuple[str, ...] = ()


class _SegmentState:
    """The speech segment being synthesised, if any."""

    def __init__(self) -> None:
        self.index = -1
        self._stack: contextlib.AsyncExitStack | None = None
        self._stream = None
        self._reader: asyncio.Task[None] | None = None

    async def open_speech(
        self, engine: Engine, queue: asyncio.Queue, model: str, voice: _Voice
    ) -> None:
        self._stack = contextlib.AsyncExitStack()
        try:
            endpoint = await self._stack.enter_async_context(engine.speech_pool.use())
            client = engine.speech_client(endpoint.url)
            self._stream = await self._stack.enter_async_context(
                client.stream(model, speaker=voice.speaker, sample_rate=voice.sample_rate)
            )
        except NoHealthyWorker as error:
            await self.abort()
            raise APIError(503, str(error)) from error
        except (SpeechWorkerError, SpeechWorkerUnavailable) as error:
            await self.abort()
            raise _speech_api_error(error) from error
        index = self.index
        stream = self._stream

        async def read_audio() -> None:
            async for chunk in stream:
                await queue.put(AudioOut(chunk, index))

        self._reader = asyncio.create_task(read_audio())
        if voice.prefix:
            await self.send(list(voice.prefix), False)

    async def send(self, tokens: list[str], context: bool) -> None:
        if self._stream is None or not tokens:
            return
        try:
            await self._stream.send_tokens(tokens, context=context)
        except (SpeechWorkerError, SpeechWorkerUnavailable) as error:
            raise _speech_api_error(error, what="failed mid-stream") from error

    async def close(self) -> None:
        """End the segment normally: all of its audio reaches the queue before this returns."""
        if self._stream is None:
            return
        try:
            await self._stream.end()
            assert self._reader is not None
            await self._reader
        except (SpeechWorkerError, SpeechWorkerUnavailable) as error:
            raise _speech_api_error(error, what="failed mid-stream") from error
        finally:
            await self._release()

    async def abort(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.cancel()
        await self._release()

    async def _release(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._reader = None
        self._stream = None
        if self._stack is not None:
            stack, self._stack = self._stack, None
            with contextlib.suppress(Exception):
                await stack.aclose()


def single_tokens(pieces: Sequence[str]) -> list[str]:
    """One speech token per item, as the speech worker's stream wants them.

    SPEECH-mode events carry the generated text as it came, and one LM stream delta may hold
    several tokens (``[Hu3][Hu7]``) when vLLM batches its output; anything between tokens (the
    stripped whitespace of a stop) is not speech.
    """
    return [match.group(0) for piece in pieces for match in SPEECH_TOKEN.finditer(piece)]


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
