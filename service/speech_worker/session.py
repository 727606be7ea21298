"""One streaming-synthesis session: speech tokens in, pcm16 bytes out, as soon as possible.

Tokens go through the incremental token-string parser (`UnitStreamParser`,
docs/format.md#token-string-to-units), whose aligned entries feed a `StreamingVocoder` (duration
prediction on: LM output is always aligned). The vocoder's float chunks are converted to pcm16 at
the requested rate by a streaming encoder.

Context tokens (the prompt's trailing speech, sent so that generated speech continues it with the
right pitch/style and vocoder context) are vocoded like the rest, but their audio is not sent.
The cut is exact: it falls at the first sample of the first generated unit, from the frame
durations the streaming vocoder actually used. This deliberately differs from the reference,
which vocodes prompt + generation and drops a token-count *proportion* of the samples
(docs/format.md#parsing-generated-output); the proportional cut lands a little early or late
depending on unit durations.

Methods are synchronous and not thread-safe: the worker calls them from one worker thread at a
time per session.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence

import numpy as np

from service.audio.encode import StreamEncoder
from service.speech.pipeline import SpeechStack
from service.speech.streaming import RenderJob, StreamingVocoder
from service.speech.vocoder import UnitVocoder
from service.speech_worker.batcher import Urgency, urgency
from service.speech_worker.protocol import WorkerRequestError
from service.units.tokens import SPEECH_TOKEN, StreamKind, UnitEntry, UnitStreamParser

Token = tuple[StreamKind, int]
_KINDS: dict[str, StreamKind] = {"Hu": "hubert", "Pi": "pitch", "St": "style"}


def token_limits(stack: SpeechStack) -> dict[StreamKind, int | None]:
    """Number of valid values per stream for this variant's vocoder (None = stream ignored)."""
    vocoder = stack.vocoder
    config = vocoder.config
    return {
        "hubert": config.num_embeddings,
        "pitch": config.num_f0_tokens if stack.expressive and vocoder.has_pitch else None,
        "style": config.num_style_tokens if stack.expressive and vocoder.has_style_codes else None,
    }


def parse_tokens(
    tokens: Sequence[object], limits: dict[StreamKind, int | None], *, offset: int = 0
) -> list[Token]:
    """Validate token strings such as "[Hu12]"; errors name the token's index in the stream."""
    parsed: list[Token] = []
    for index, text in enumerate(tokens):
        where = f"tokens[{offset + index}]"
        match = SPEECH_TOKEN.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise WorkerRequestError(
                400,
                f"{where}: {text!r} is not a speech token ([Hu<n>], [Pi<n>] or [St<n>])",
                param="tokens",
                code="invalid_tokens",
            )
        kind, digits = _KINDS[match.group(1)], match.group(2)
        # Long digit strings are out of any table; int() of thousands of digits even raises.
        value = int(digits) if len(digits) <= 9 else 10**9
        size = limits[kind]
        if size is not None and value >= size:
            raise WorkerRequestError(
                400,
                f"{where}: {text} is out of range: valid {kind} values are 0..{size - 1}",
                param="tokens",
                code="invalid_tokens",
            )
        parsed.append((kind, value))
    return parsed


def check_token_budget(total: int, limit: int) -> None:
    if total > limit:
        raise WorkerRequestError(
            400,
            f"stream exceeds the limit of {limit} speech tokens",
            param="tokens",
            code="too_many_tokens",
        )


def check_speaker(stack: SpeechStack, speaker: int) -> None:
    vocoder = stack.vocoder
    if not vocoder.config.multispkr:
        return
    if not 0 <= speaker < vocoder.num_speakers:
        raise WorkerRequestError(
            400,
            f"speaker {speaker} is out of range: {stack.variant} has speakers "
            f"0..{vocoder.num_speakers - 1}",
            param="speaker",
            code="invalid_speaker",
        )


class StreamSession:
    """Incremental synthesis of one utterance for one client."""

    def __init__(
        self,
        stack: SpeechStack,
        *,
        speaker: int,
        sample_rate: int,
        max_tokens: int,
        first_chunk_units: int,
        chunk_units: int,
        max_chunk_units: int | None = None,
        incremental: bool = False,
        seed: int | None = None,
    ) -> None:
        check_speaker(stack, speaker)
        self.stack = stack
        self.max_tokens = max_tokens
        self.chunk_units = chunk_units
        self.max_chunk_units = max_chunk_units or chunk_units
        self._limits = token_limits(stack)
        self._parser = UnitStreamParser(
            expressive=stack.expressive, rng=None if seed is None else random.Random(seed)
        )
        self._vocoder: StreamingVocoder = stack.streaming_vocoder(
            speaker=speaker,
            dur_pred=True,
            first_chunk_units=first_chunk_units,
            chunk_units=chunk_units,
            max_chunk_units=self.max_chunk_units,
            incremental=incremental,
        )
        self._encoder = StreamEncoder("pcm", sample_rate, input_rate=stack.sample_rate)
        self.tokens = 0
        self.context_units = 0
        self.generated_units = 0
        self.produced = 0  # vocoder samples (16 kHz) so far, context audio included
        self.sent_samples = 0  # pcm16 samples handed out, at the output rate
        self.sample_rate = sample_rate
        self.first_audio_at: float | None = None  # time.monotonic() of the first bytes out
        self._finishing = False

    # ---- input (event loop side: cheap checks only)

    def accept(self, tokens: Sequence[object], *, context: bool) -> list[Token]:
        """Validate one `tokens` message and account for it; returns the parsed tokens."""
        if context and self.generated_units:
            raise WorkerRequestError(
                400,
                "context tokens must come before the generated tokens of a stream",
                param="context",
                code="invalid_tokens",
            )
        check_token_budget(self.tokens + len(tokens), self.max_tokens)
        parsed = parse_tokens(tokens, self._limits, offset=self.tokens)
        self.tokens += len(parsed)
        units = sum(1 for kind, _ in parsed if kind == "hubert")
        if context:
            self.context_units += units
        else:
            self.generated_units += units
        return parsed

    def batches(self, tokens: list[Token]) -> Iterator[list[Token]]:
        """Slices of HuBERT tokens small enough that audio goes out between them.

        Each holds `StreamingVocoder.slice_units` units, decided lazily: after the previous
        slice was pushed.
        """
        start = units = 0
        for index, (kind, _) in enumerate(tokens):
            if kind != "hubert":
                continue
            units += 1
            if units > self._vocoder.slice_units():
                yield tokens[start:index]
                start, units = index, 1
        if start < len(tokens):
            yield tokens[start:]

    # ---- synthesis (worker thread side)
    # A step is plan (parse, predict durations, cut windows), render (the vocoder's forward
    # passes, by the worker's `VocoderBatcher`, with other streams' windows), then deliver
    # (context cut, pcm16 encoding).

    def plan(self, tokens: list[Token]) -> list[RenderJob]:
        """Feed parsed tokens; the chunks that became final, still to be rendered."""
        entries: list[UnitEntry] = []
        for kind, value in tokens:
            entries += self._parser.feed_unit(kind, value)
        return self._jobs(entries)

    def plan_finish(self) -> list[RenderJob]:
        """End of input: the remaining chunks, still to be rendered."""
        self._finishing = True
        jobs = self._jobs(self._parser.finish())
        try:
            jobs += self._vocoder.finish_jobs()
        except ValueError as error:
            raise WorkerRequestError(400, str(error), param="tokens") from None
        return jobs

    def deliver(self, chunks: list[np.ndarray]) -> bytes:
        """The pcm16 bytes of rendered chunks (in the order they were planned)."""
        return self._output(chunks)

    def urgency(self) -> Urgency:
        """This stream's place in the vocoder scheduler's queue (service/speech_worker/batcher)."""
        return urgency(self.sent_samples / self.sample_rate, self.first_audio_at, time.monotonic())

    def deliver_last(self, chunks: list[np.ndarray]) -> bytes:
        """The pcm16 bytes of the last chunks and the encoder's tail."""
        out = self._output(chunks)
        tail = self._encoder.close()
        self.sent_samples += len(tail) // 2
        return out + tail

    @property
    def vocoder(self) -> UnitVocoder:
        return self._vocoder.vocoder

    def _jobs(self, entries: list[UnitEntry]) -> list[RenderJob]:
        if not entries:
            return []
        vocoder = self._vocoder.vocoder
        if vocoder.has_pitch and any(e.pitch is None for e in entries):
            # Only reachable at the end: the parser holds entries until a pitch token arrives.
            raise WorkerRequestError(
                400,
                f"{self.stack.variant} needs pitch tokens ([Pi<n>]); the stream has none",
                param="tokens",
                code="invalid_tokens",
            )
        return self._vocoder.push_jobs(
            [e.hubert for e in entries],
            [e.pitch for e in entries] if vocoder.has_pitch else None,
            [e.style for e in entries] if vocoder.has_style_codes else None,
        )

    # ---- output

    def _output(self, chunks: list[np.ndarray]) -> bytes:
        out = []
        for chunk in chunks:
            kept = self._after_context(chunk)
            if kept.size:
                data = self._encoder.write(kept)
                self.sent_samples += len(data) // 2
                if data and self.first_audio_at is None:
                    self.first_audio_at = time.monotonic()
                out.append(data)
        return b"".join(out)

    def _after_context(self, chunk: np.ndarray) -> np.ndarray:
        """The part of a chunk that follows the context units' last sample."""
        start = self.produced
        self.produced += len(chunk)
        if not self.context_units:
            return chunk
        if not self.generated_units:
            # Everything vocoded so far belongs to context units (they come first).
            return chunk[:0]
        boundary = self._context_end()
        if boundary is None:
            # The chunk ends before the boundary is even known, so it is all context.
            return chunk[:0]
        return chunk[max(0, boundary - start) :]

    def _context_end(self) -> int | None:
        """Sample index where the first generated unit starts, once its frames are final."""
        return self._vocoder.unit_end_sample(self.context_units)
