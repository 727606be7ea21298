"""Turning generated LM output into text and speech segments, batch and streaming.

The rules are in docs/format.md#parsing-generated-output.

Speech comes out as token strings, not audio: the caller vocodes each `SpeechSegment` and, when
it carries a `Trim`, drops the start of the waveform with `Trim.apply`.

Behaviour kept from the reference, on purpose:

* TEXT: one text segment, the generated string with surrounding whitespace stripped.
* SPEECH: one speech segment, the stripped generated string.
* ARBITRARY: when the prompt ends with a speech token and the stripped output starts with one
  ("overlap"), the output is parsed together with the prompt's last run of speech tokens,
  unstripped, so the continued speech keeps its pitch/style context; its audio is trimmed
  afterwards by token-count ratio. The string is split into text/speech chunks
  (docs/format.md#splitting-into-chunks) and a speech chunk with c ``[Hu`` occurrences is
  dropped when:

  - it is the overlap chunk (index 0) and ``(c + 1) - p < 25``, p = ``[Hu`` occurrences in the
    prompt part; otherwise the first ``ceil(len(wav) * (p / (c + 1)))`` samples are dropped
    (the reference's float expression, computed by `Trim.samples`);
  - it is not the first chunk and ``c + 1 < 25``.

  The ``+ 1`` is the reference's off-by-one (it counts split pieces); a first chunk that
  does not overlap has no minimum.

Deliberate differences:

* The generated part comes in separately (decoded from the generated token ids) instead of being
  cut from the full decoded text at ``len(prompt)``; ``G = prompt + generated``.
* Dropped chunks are never vocoded (the reference vocodes first and can crash on a chunk it
  would then drop).
* A speech segment the vocoder cannot render is dropped and reported instead of crashing:
  ``no_units`` when it has no well-formed ``[Hu<n>]`` token, ``no_pitch`` when the expressive
  variant gets no ``[Pi<n>]`` token (its vocoder needs pitch codes,
  docs/format.md#vocoding-and-duration-prediction). `parse_output_report` and the streaming
  `Done` event list the dropped chunks with the reason.

Streaming (`StreamParser`) emits what `parse_output` keeps, in order, as soon as it is certain:

* Text is emitted as it arrives, except whitespace that may turn out to be the end of the output
  (held until non-space text follows; stripped at the end) and a ``[`` that could still open a
  marker or speech token (held for at most a few characters).
* A speech chunk is held until it is certain to be kept: the first chunk until its first HuBERT
  token (plus first pitch token for expressive); a later chunk until it has 24 ``[Hu`` tokens
  (about one second of speech at 25 Hz, before de-duplication); the overlap chunk until it has
  24 ``[Hu`` tokens beyond the prompt's. After that its tokens stream one by one. A chunk that
  ends before reaching its threshold is never emitted.
* The prompt's part of the overlap chunk is emitted as ``SpeechTokens(..., context=True)``: the
  vocoder needs it for context but its audio is not output (the batch path trims it
  proportionally instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from service.lm.prompt import OutputModality
from service.units.boundaries import (
    ChunkKind,
    ends_with_speech_token,
    last_speech_run_start,
    next_item,
    split_chunks,
    starts_with_speech_token,
)
from service.units.tokens import SpeechTokenScanner, iter_speech_tokens

# A speech chunk needs (count of "[Hu") + 1 >= this to be kept
# (docs/format.md#parsing-generated-output).
MIN_SPEECH_TOKENS = 25
HUBERT_MARK = "[Hu"

Wave = TypeVar("Wave")


@dataclass(frozen=True)
class Trim:
    """Drop the start of a vocoded overlap chunk: the prompt's share of its HuBERT count."""

    prompt_hubert: int  # p: "[Hu" occurrences in the prompt part
    chunk_hubert: int  # c + 1: "[Hu" occurrences in the whole chunk, plus one (reference)

    def samples(self, n_samples: int) -> int:
        # Same float expression as the reference: ceil(n * (p / (c + 1))).
        return math.ceil(n_samples * (self.prompt_hubert / self.chunk_hubert))

    def apply(self, wave: Wave) -> Wave:
        """The waveform without its first `samples(len(wave))` samples (any sliceable)."""
        return wave[self.samples(len(wave)) :]  # type: ignore[index]


@dataclass(frozen=True)
class TextSegment:
    text: str


@dataclass(frozen=True)
class SpeechSegment:
    """A speech token string to vocode (decode it with `string_to_units`), maybe trimmed."""

    tokens: str
    trim: Trim | None = None


Segment = TextSegment | SpeechSegment

DropReason = Literal["short", "short_continuation", "no_units", "no_pitch"]


@dataclass(frozen=True)
class DroppedSpeech:
    tokens: str
    reason: DropReason


@dataclass(frozen=True)
class ParsedOutput:
    segments: list[Segment]
    dropped: list[DroppedSpeech] = field(default_factory=list)


def _drop_reason(
    *,
    index: int,
    overlap: bool,
    prompt_hubert: int,
    hubert_marks: int,
    has_hubert: bool,
    has_pitch: bool,
    expressive: bool,
) -> DropReason | None:
    """Why a speech chunk is dropped, or None to keep it. Monotone: growing chunks only pass."""
    if index == 0 and overlap:
        if hubert_marks + 1 - prompt_hubert < MIN_SPEECH_TOKENS:
            return "short_continuation"
    elif index > 0 and hubert_marks + 1 < MIN_SPEECH_TOKENS:
        return "short"
    if not has_hubert:
        return "no_units"
    if expressive and not has_pitch:
        return "no_pitch"
    return None


def _stream_flags(tokens: str) -> tuple[bool, bool]:
    kinds = {kind for kind, _ in iter_speech_tokens(tokens)}
    return "hubert" in kinds, "pitch" in kinds


def _overlap_start(prompt: str) -> int:
    # A prompt that only looks like it ends with speech may have no well-formed token; the
    # reference then slices with None, i.e. from the start.
    start = last_speech_run_start(prompt)
    return 0 if start is None else start


# ---------------------------------------------------------------------------------------------
# Batch


def parse_output(
    prompt: str, generated: str, modality: OutputModality | str, *, expressive: bool = False
) -> list[Segment]:
    """The kept segments of one generation, in order (see the module docstring)."""
    return parse_output_report(prompt, generated, modality, expressive=expressive).segments


def parse_output_report(
    prompt: str, generated: str, modality: OutputModality | str, *, expressive: bool = False
) -> ParsedOutput:
    """Like `parse_output`, also listing the speech chunks that were dropped and why."""
    mode = OutputModality.parse(modality)
    new = generated.strip()
    if mode is OutputModality.TEXT:
        return ParsedOutput([TextSegment(new)])
    if mode is OutputModality.SPEECH:
        chunks = [(new, "speech")]
        return _parse_chunks(chunks, overlap=False, prompt_hubert=0, expressive=expressive)
    overlap = ends_with_speech_token(prompt) and starts_with_speech_token(new)
    if not overlap:
        return _parse_chunks(
            split_chunks(new), overlap=False, prompt_hubert=0, expressive=expressive
        )
    context = prompt[_overlap_start(prompt) :]
    chunks = split_chunks(context + generated)
    return _parse_chunks(
        chunks, overlap=True, prompt_hubert=context.count(HUBERT_MARK), expressive=expressive
    )


def _parse_chunks(
    chunks: list[tuple[str, ChunkKind]], *, overlap: bool, prompt_hubert: int, expressive: bool
) -> ParsedOutput:
    segments: list[Segment] = []
    dropped: list[DroppedSpeech] = []
    for index, (content, kind) in enumerate(chunks):
        if kind == "text":
            segments.append(TextSegment(content))
            continue
        has_hubert, has_pitch = _stream_flags(content)
        marks = content.count(HUBERT_MARK)
        reason = _drop_reason(
            index=index,
            overlap=overlap,
            prompt_hubert=prompt_hubert,
            hubert_marks=marks,
            has_hubert=has_hubert,
            has_pitch=has_pitch,
            expressive=expressive,
        )
        if reason is not None:
            dropped.append(DroppedSpeech(content, reason))
        elif index == 0 and overlap:
            segments.append(SpeechSegment(content, Trim(prompt_hubert, marks + 1)))
        else:
            segments.append(SpeechSegment(content))
    return ParsedOutput(segments, dropped)


# ---------------------------------------------------------------------------------------------
# Streaming events


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class SpeechTokens:
    """Pieces of a speech segment's token string, in order.

    In ARBITRARY mode each piece is one speech item (docs/format.md#splitting-into-chunks;
    normally one token such as ``[Hu12]``); in SPEECH mode they are the generated text as fed,
    without the whitespace that ends up stripped (feed them to `UnitStreamParser.feed`, which
    copes with any split). `context` marks the prompt's tokens that start an overlap segment:
    vocode them, do not output their audio.
    """

    tokens: list[str]
    context: bool = False


@dataclass(frozen=True)
class ModalitySwitch:
    """The following output is of kind `to` (emitted before the first output too)."""

    to: ChunkKind


@dataclass(frozen=True)
class Done:
    dropped: tuple[DroppedSpeech, ...] = ()


Event = TextDelta | SpeechTokens | ModalitySwitch | Done


# ---------------------------------------------------------------------------------------------
# Streaming parser


class _StripFilter:
    """Incremental ``str.strip``: drops leading whitespace, holds trailing whitespace."""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def feed(self, piece: str) -> str:
        if not self._started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self._started = True
        text = self._held + piece
        body = text.rstrip()
        self._held = text[len(body) :]
        return body


class _Splitter:
    """Incremental `split_chunks` items: (kind, text, offset); markers are skipped."""

    def __init__(self) -> None:
        self._buffer = ""
        self._offset = 0

    def feed(self, text: str) -> list[tuple[ChunkKind, str, int]]:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> list[tuple[ChunkKind, str, int]]:
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> list[tuple[ChunkKind, str, int]]:
        buffer = self._buffer
        items: list[tuple[ChunkKind, str, int]] = []
        pos = 0
        while pos < len(buffer):
            item = next_item(buffer, pos, final=final)
            if item is None:
                break
            if item.kind is not None:
                items.append((item.kind, buffer[pos : item.end], self._offset + pos))
            pos = item.end
        self._buffer = buffer[pos:]
        self._offset += pos
        return items


class _SpeechChunk:
    """A speech chunk being received: held until certain to be kept, then streamed."""

    def __init__(self, index: int, overlap: bool, prompt_hubert: int, expressive: bool) -> None:
        self.index = index
        self.overlap = overlap
        self.prompt_hubert = prompt_hubert
        self.expressive = expressive
        self.held: list[tuple[str, bool]] = []  # (piece, from the prompt)
        self.released = False
        self._marks = 0
        self._scanner = SpeechTokenScanner()
        self._kinds: set[str] = set()
        self._text: list[str] = []

    def add(self, piece: str, context: bool) -> None:
        self._text.append(piece)
        self._marks += piece.count(HUBERT_MARK)
        self._kinds.update(kind for kind, _ in self._scanner.feed(piece))
        if not self.released:
            self.held.append((piece, context))

    def reason(self) -> DropReason | None:
        return _drop_reason(
            index=self.index,
            overlap=self.overlap,
            prompt_hubert=self.prompt_hubert,
            hubert_marks=self._marks,
            has_hubert="hubert" in self._kinds,
            has_pitch="pitch" in self._kinds,
            expressive=self.expressive,
        )

    def trim_hubert(self) -> int:
        return self._marks + 1

    def tokens(self) -> str:
        return "".join(self._text)


def _leading_speech(raw: str, *, final: bool) -> bool | None:
    """`starts_with_speech_token(raw.strip())` once the prefix seen so far decides it."""
    if final:
        return starts_with_speech_token(raw.strip())
    # The reference looks at most 11 characters in, for the first "]" at position >= 4.
    head = raw.lstrip()[:11]
    if head and (head[0] != "[" or len(head) == 11 or "]" in head[4:]):
        return starts_with_speech_token(head)
    return None


class StreamParser:
    """Incremental `parse_output` over the generated pieces of one request.

    Feed each generated piece (a text piece or one token string such as ``[Hu12]``, ``[Text]``)
    to `feed`; call `finish` at the end. Both return events; `finish` ends with `Done`. The
    events describe the same segments `parse_output` returns for ``"".join(pieces)`` (the tests
    rebuild them with tests/support/stream_segments.py), except that adjacent text segments come out
    joined (a dropped speech chunk between them leaves no trace) and TEXT mode emits nothing for
    empty output.
    """

    def __init__(
        self, prompt: str, modality: OutputModality | str, expressive: bool = False
    ) -> None:
        self.modality = OutputModality.parse(modality)
        self.expressive = expressive
        self._prompt = prompt
        self._events: list[Event] = []
        self._emitted: ChunkKind | None = None
        self._dropped: list[DroppedSpeech] = []
        self._finished = False
        self._strip: _StripFilter | None = _StripFilter()
        self._splitter = _Splitter()
        self._chunk: _SpeechChunk | None = None
        self._chunk_kind: ChunkKind | None = None
        self._chunk_index = -1
        self._overlap = False
        self._prompt_hubert = 0
        self._context_end = 0
        # ARBITRARY output after a prompt ending in speech: wait to see whether it overlaps.
        arbitrary = self.modality is OutputModality.ARBITRARY
        self._undecided: str | None = "" if arbitrary and ends_with_speech_token(prompt) else None
        if self.modality is OutputModality.SPEECH:
            self._chunk_kind = "speech"
            self._chunk_index = 0
            self._chunk = _SpeechChunk(0, False, 0, expressive)

    def feed(self, piece: str) -> list[Event]:
        if self._finished:
            raise RuntimeError("StreamParser: input after finish()")
        if self._undecided is not None:
            self._undecided += piece
            overlap = _leading_speech(self._undecided, final=False)
            if overlap is not None:
                self._decide(overlap)
        else:
            self._route(piece)
        return self._take_events()

    def finish(self) -> list[Event]:
        if self._finished:
            raise RuntimeError("StreamParser: finish() called twice")
        if self._undecided is not None:
            self._decide(_leading_speech(self._undecided, final=True))
        self._finished = True
        if self.modality is OutputModality.ARBITRARY:
            self._on_items(self._splitter.finish())
        self._close_chunk()
        self._events.append(Done(tuple(self._dropped)))
        return self._take_events()

    # -- routing -------------------------------------------------------------------------------

    def _decide(self, overlap: bool) -> None:
        raw, self._undecided = self._undecided or "", None
        if overlap:
            context = self._prompt[_overlap_start(self._prompt) :]
            self._overlap = True
            self._strip = None  # the reference does not strip the overlapping form
            self._prompt_hubert = context.count(HUBERT_MARK)
            self._context_end = len(context)
            self._on_items(self._splitter.feed(context))
        self._route(raw)

    def _route(self, piece: str) -> None:
        if self._strip is not None:
            piece = self._strip.feed(piece)
        if not piece:
            return
        if self.modality is OutputModality.TEXT:
            self._emit_text(piece)
        elif self.modality is OutputModality.SPEECH:
            self._add_speech(piece, context=False)
        else:
            self._on_items(self._splitter.feed(piece))

    def _on_items(self, items: list[tuple[ChunkKind, str, int]]) -> None:
        for kind, text, offset in items:
            if kind != self._chunk_kind:
                self._close_chunk()
                self._chunk_kind = kind
                self._chunk_index += 1
                if kind == "speech":
                    overlap = self._overlap and self._chunk_index == 0
                    self._chunk = _SpeechChunk(
                        self._chunk_index, overlap, self._prompt_hubert, self.expressive
                    )
            if kind == "text":
                self._emit_text(text)
            else:
                # Only the overlap chunk treats the prompt's tokens as context (batch: Trim).
                chunk = self._chunk
                context = chunk is not None and chunk.overlap and offset < self._context_end
                self._add_speech(text, context=context)

    # -- speech chunks -------------------------------------------------------------------------

    def _add_speech(self, piece: str, *, context: bool) -> None:
        chunk = self._chunk
        assert chunk is not None
        chunk.add(piece, context)
        if chunk.released:
            self._emit(SpeechTokens([piece]), "speech")
        elif chunk.reason() is None:
            self._release(chunk)

    def _release(self, chunk: _SpeechChunk) -> None:
        chunk.released = True
        prompt_part = [piece for piece, context in chunk.held if context]
        own_part = [piece for piece, context in chunk.held if not context]
        chunk.held = []
        if prompt_part:
            self._emit(SpeechTokens(prompt_part, context=True), "speech")
        if own_part:
            self._emit(SpeechTokens(own_part), "speech")

    def _close_chunk(self) -> None:
        chunk, self._chunk = self._chunk, None
        if chunk is None or chunk.released:
            return
        reason = chunk.reason()
        # Not released means a threshold was never met, so there is always a reason here.
        assert reason is not None
        self._dropped.append(DroppedSpeech(chunk.tokens(), reason))

    # -- events --------------------------------------------------------------------------------

    def _emit_text(self, text: str) -> None:
        self._emit(TextDelta(text), "text")

    def _emit(self, event: Event, kind: ChunkKind) -> None:
        if kind != self._emitted:
            self._events.append(ModalitySwitch(kind))
            self._emitted = kind
        self._events.append(event)

    def _take_events(self) -> list[Event]:
        events, self._events = _coalesce(self._events), []
        return events


def _coalesce(events: list[Event]) -> list[Event]:
    """Join adjacent text deltas and adjacent speech pieces of the same role."""
    out: list[Event] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, TextDelta) and isinstance(last, TextDelta):
            out[-1] = TextDelta(last.text + event.text)
        elif (
            isinstance(event, SpeechTokens)
            and isinstance(last, SpeechTokens)
            and last.context == event.context
        ):
            out[-1] = SpeechTokens(last.tokens + event.tokens, event.context)
        else:
            out.append(event)
    return out
