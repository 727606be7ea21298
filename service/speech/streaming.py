"""Incremental unit vocoding whose output equals one-shot synthesis.

Units (and, for the expressive vocoder, pitch/style codes) arrive a few at a time. Audio is
released in chunks of whole units: the first after ``first_chunk_units`` units, then every
``chunk_units`` units (more at once for a stream that fell behind: up to as many as it emitted
before, at most ``max_chunk_units``). A chunk also takes the ready units whose frames still fit
in the length its forward pass is padded to (`shape_bucket`): that audio costs nothing more.
Each chunk is synthesized from a window of frames that adds the generator's exact left/right
receptive field (derived from the loaded kernel sizes, dilations and up-sampling, see
`CodeHiFiGAN.frame_context`) and only the chunk's own samples are kept, so the concatenated
chunks equal ``vocoder.synthesize`` of all units (up to float rounding).
Durations are predicted the same way, with the duration predictor's receptive field in units.
Work per step is bounded by the chunk plus its context; the history is never re-synthesized.

An *incremental* stream (``incremental=True``, the speech worker's default on a CPU) renders no
windows: its chunks feed whole blocks of frames to a conv stack that keeps its layers' state
between chunks (service/speech/incremental.py), so no frame is computed twice, and only its
last chunk is a window. Its chunks release every sample the fed frames determine, so they need
not end on a unit; they cannot be batched across streams.

Latency before the first audio, in units pushed (R = right frame context, d_r = right
duration context in units, both from the loaded config):

* duration prediction: the chunk's units, then enough units to cover R frames past the chunk,
  then d_r more units so their durations are final. That is at most
  ``first_chunk_units + R + d_r`` (every duration 1) and typically fewer (durations ~2).
* no duration prediction (expressive raw units, one frame per unit):
  exactly ``first_chunk_units + R``, provided pitch/style codes covering those frames have
  arrived (pitch at 1/``hubert_to_f0`` and style at 1/``hubert_to_style`` of the unit rate).

* incremental streams: the first chunk's units, then enough units that the frames cover the
  stack's right padding (`IncrementalDecoder.lag`, at most R frames) past them and round them
  up to whole `FIRST_STEP_FRAMES` (fewer than 8 more), then d_r.

For the official unit HiFi-GAN geometry (upsample_initial_channel 512, rates [5, 4, 4, 4, 2],
kernels [11, 8, 8, 8, 4], resblocks [3, 7, 11] x dilations [1, 3, 5]) R = 20 frames (0.8 s) on
each side and d_r = 2, so with ``first_chunk_units = 10`` the first chunk needs at most 32 units
as a window, and at most 39 incrementally (the decoder's lag is at most R frames, plus the
rounding to whole `FIRST_STEP_FRAMES`); the tiny test geometry has R = 7. `latency_units`
reports the worst case for the loaded vocoder.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.speech.incremental import FIRST_STEP_FRAMES, STEP_FRAMES, IncrementalDecoder
from service.speech.vocoder import (
    DEFAULT_SPEAKER,
    Conditioning,
    FrameCodes,
    UnitVocoder,
    as_codes,
    check_aligned,
    check_upsampling,
    shape_bucket,
)


@dataclass(frozen=True)
class RenderJob:
    """One chunk to synthesize: a window of frames, and where the chunk's samples lie in it.

    `batchable` windows carry the full right receptive field, so rendering them padded on the
    right next to other windows (`UnitVocoder.render_batch`) leaves the chunk's samples as they
    are. A window cut short by the end of the stream is rendered alone; when it carries the full
    left receptive field (`left_padding_ok`) it may be padded on the left instead.
    """

    frames: FrameCodes
    conditioning: Conditioning
    start: int  # first sample of the chunk in the window's audio
    stop: int | None  # end of the chunk; None = to the end of the window's audio
    batchable: bool
    left_padding_ok: bool = False
    # Set for a chunk of an incremental stream: `frames` are the next frames its decoder takes,
    # and all the audio that comes out is the chunk's.
    decoder: IncrementalDecoder | None = None

    def cut(self, wav: np.ndarray) -> np.ndarray:
        return wav[self.start : self.stop]


def render_alone(vocoder: UnitVocoder, job: RenderJob) -> np.ndarray:
    """A job's audio, before `RenderJob.cut`, from a forward pass of its own."""
    if job.decoder is not None:
        return vocoder.render_incremental(job.decoder, job.frames, job.conditioning)
    frames = len(job.frames)
    pad = shape_bucket(frames) - frames if job.left_padding_ok else 0
    return vocoder.render(job.frames, job.conditioning, pad_left=pad)


class StreamingVocoder:
    """Push units as they arrive, get audio chunks back; `finish` flushes the rest.

    ``dur_pred`` and ``deduplicated`` mean what they mean for `UnitVocoder.synthesize`.
    With duration prediction, pitch/style codes pair with the kept units in order (as in
    one-shot synthesis); without it they are the raw 12.5 Hz / 1 Hz streams and are up-sampled.
    Length problems that one-shot synthesis reports up front (mismatched pitch/style lengths,
    the up-sampling precondition) can only be seen at `finish`, after earlier chunks went out.
    """

    def __init__(
        self,
        vocoder: UnitVocoder,
        *,
        speaker: int = DEFAULT_SPEAKER,
        global_style: int | None = None,
        dur_pred: bool = True,
        deduplicated: bool = True,
        first_chunk_units: int = 10,
        chunk_units: int = 25,
        max_chunk_units: int | None = None,
        incremental: bool = False,
    ) -> None:
        if first_chunk_units < 1 or chunk_units < 1:
            raise ValueError("first_chunk_units and chunk_units must be at least 1")
        if max_chunk_units is not None and max_chunk_units < chunk_units:
            raise ValueError("max_chunk_units must be at least chunk_units")
        if dur_pred:
            vocoder.require_duration()
        self.vocoder = vocoder
        self.dur_pred = dur_pred
        self.first_chunk_units = first_chunk_units
        self.chunk_units = chunk_units
        self.max_chunk_units = max_chunk_units or chunk_units
        self._conditioning = vocoder.conditioning(speaker, global_style)
        self._collapse = dur_pred and not deduplicated
        self.left_frames, self.right_frames = vocoder.frame_context
        self.left_units, self.right_units = vocoder.duration_context if dur_pred else (0, 0)
        # Received streams (units after de-duplication and negative filtering).
        self._units: list[int] = []
        self._pitch: list[int] = []
        self._style: list[int] = []
        self._last_raw: int | None = None
        self._durations: list[int] = []
        # Frame-level codes of the units whose frames are final, and each unit's frame end.
        self._frames = FrameCodes(
            [], [] if vocoder.has_pitch else None, [] if vocoder.has_style_codes else None
        )
        self._unit_ends: list[int] = []
        self._emitted_units = 0
        self._emitted_frames = 0
        self._finished = False
        # Incremental: frames handed to the decoder, and the samples they release.
        self._decoder = vocoder.incremental_decoder() if incremental else None
        self._fed_frames = 0
        self._emitted_samples = 0

    @property
    def latency_units(self) -> int:
        """Worst-case units pushed before the first chunk comes out (see the module docstring;
        an incremental stream needs its units' frames plus the decoder's lag)."""
        if self._decoder is None:
            return self.first_chunk_units + self.right_frames + self.right_units
        lag_frames = -(-self._decoder.lag // self._decoder.hop)
        # Up to FIRST_STEP_FRAMES - 1 more frames round the first chunk up (`_frames_due`).
        return self.first_chunk_units + lag_frames + FIRST_STEP_FRAMES - 1 + self.right_units

    @property
    def started(self) -> bool:
        """Whether the first chunk has come out."""
        return self._emitted_units > 0

    def slice_units(self) -> int:
        """Most units to push at once so that audio goes out between pushes.

        Until the first chunk is out, the vocoder's latency in units: the push that releases
        the first chunk then releases nothing bigger with it. Afterwards the next chunk's cap
        (`chunk_cap`): a burst of units goes in about one chunk per push, and each chunk's
        audio can be sent before the next one is rendered.
        """
        return self.chunk_cap() if self.started else self.latency_units

    def chunk_cap(self) -> int:
        """Most units the next chunk may take.

        `first_chunk_units` for the first; then as many as the stream has emitted so far,
        at least `chunk_units` and at most `max_chunk_units`. So the cap doubles from chunk to
        chunk: a young stream's listener, who holds little audio yet, is not kept waiting by
        one long window, while a stream that runs well ahead renders large, cheap ones (each
        window pays the receptive field once). At four official-size streams on one core,
        coalescing straight to 100 units after a 10-unit first chunk stalled every player
        after its first chunk (docs/benchmarks.md).
        """
        emitted = self._emitted_units
        if emitted == 0:
            return self.first_chunk_units
        return min(self.max_chunk_units, max(self.chunk_units, emitted))

    def unit_end_sample(self, count: int) -> int | None:
        """Sample index where the first `count` units end, once their frames are final."""
        if count == 0:
            return 0
        if len(self._unit_ends) < count:
            return None
        return self._unit_ends[count - 1] * self.vocoder.hop_length

    # ---- public API

    def push(
        self,
        units: Sequence[int],
        pitch: Sequence[int] | None = None,
        style: Sequence[int] | None = None,
    ) -> list[np.ndarray]:
        """Add codes; return the audio chunks that became final (possibly none)."""
        return self.render(self.push_jobs(units, pitch, style))

    def finish(self) -> list[np.ndarray]:
        """End of input: return every remaining chunk (the stream cannot be used afterwards)."""
        return self.render(self.finish_jobs())

    def render(self, jobs: Sequence[RenderJob]) -> list[np.ndarray]:
        """The chunks of `jobs`, one at a time (a scheduler may batch windows instead)."""
        return [job.cut(render_alone(self.vocoder, job)) for job in jobs]

    def push_jobs(
        self,
        units: Sequence[int],
        pitch: Sequence[int] | None = None,
        style: Sequence[int] | None = None,
    ) -> list[RenderJob]:
        """Add codes; return the chunks that became final, still to be rendered, in order."""
        if self._finished:
            raise RuntimeError("push() after finish(): start a new StreamingVocoder")
        kept = self._keep(as_codes(units, "units"))
        pitch_codes = self._codes(pitch, "pitch code")
        style_codes = self._codes(style, "style code")
        self.vocoder.check_units(kept)
        self._units += kept
        self._pitch += pitch_codes
        self._style += style_codes
        self._advance()
        return self._emit()

    def finish_jobs(self) -> list[RenderJob]:
        """End of input: every remaining chunk, still to be rendered."""
        if self._finished:
            return []
        self._finished = True
        if self.dur_pred:
            self._check_aligned()
        else:
            self._check_upsampling()
        self._advance()
        return self._emit()

    # ---- input bookkeeping

    def _codes(self, value: Any, name: str) -> list[int]:
        if value is None:
            return []
        codes = as_codes(value, name)
        if codes:
            check = self.vocoder.check_pitch if name == "pitch code" else self.vocoder.check_style
            check(codes)
        return codes

    def _keep(self, raw: list[int]) -> list[int]:
        """De-duplicate (across pushes too) when asked, then drop negative codes."""
        kept = []
        for code in raw:
            if not (self._collapse and code == self._last_raw):
                kept.append(code)
            self._last_raw = code
        return [c for c in kept if c >= 0]

    def _check_aligned(self) -> None:
        if self.vocoder.has_pitch:
            check_aligned(len(self._pitch), len(self._units), "pitch")
        if self.vocoder.has_style_codes:
            check_aligned(len(self._style), len(self._units), "style")

    def _check_upsampling(self) -> None:
        n = len(self._units)
        if n == 0:
            return
        if self.vocoder.has_pitch:
            check_upsampling(len(self._pitch), self.vocoder.hubert_to_f0 or 1, n, "pitch codes")
        if self.vocoder.has_style_codes:
            ratio = self.vocoder.hubert_to_style or 1
            check_upsampling(len(self._style), ratio, n, "style codes")

    # ---- frames

    def _advance(self) -> None:
        if self.dur_pred:
            self._predict_durations()
            self._frame_with_durations()
        else:
            self._frame_one_to_one()

    def _predict_durations(self) -> None:
        """Durations for every unit whose right context has arrived (all of them at the end)."""
        known, total = len(self._durations), len(self._units)
        ready = total if self._finished else total - self.right_units
        if ready <= known:
            return
        start = max(0, known - self.left_units)
        window = self.vocoder.durations(self._units[start:total])
        self._durations += window[known - start : ready - start]

    def _frame_with_durations(self) -> None:
        limit = len(self._durations)
        if self.vocoder.has_pitch:
            limit = min(limit, len(self._pitch))
        if self.vocoder.has_style_codes:
            limit = min(limit, len(self._style))
        for n in range(len(self._unit_ends), limit):
            pitch = self._pitch[n] if self.vocoder.has_pitch else None
            style = self._style[n] if self.vocoder.has_style_codes else None
            self._add_frames(self._units[n], pitch, style, self._durations[n])

    def _frame_one_to_one(self) -> None:
        limit = len(self._units)
        r_pitch = self.vocoder.hubert_to_f0 or 1
        r_style = self.vocoder.hubert_to_style or 1
        if not self._finished:
            # Frame n needs pitch code n // r (padding with the last code only happens at the end).
            if self.vocoder.has_pitch:
                limit = min(limit, len(self._pitch) * r_pitch)
            if self.vocoder.has_style_codes:
                limit = min(limit, len(self._style) * r_style)
        for n in range(len(self._unit_ends), limit):
            pitch = style = None
            if self.vocoder.has_pitch:
                pitch = self._pitch[min(n // r_pitch, len(self._pitch) - 1)]
            if self.vocoder.has_style_codes:
                style = self._style[min(n // r_style, len(self._style) - 1)]
            self._add_frames(self._units[n], pitch, style, 1)

    def _add_frames(self, unit: int, pitch: int | None, style: int | None, count: int) -> None:
        frames = self._frames
        frames.units.extend([unit] * count)
        if frames.pitch is not None:
            frames.pitch.extend([pitch] * count)
        if frames.style is not None:
            frames.style.extend([style] * count)
        self._unit_ends.append(len(frames.units))

    # ---- audio

    def _emit(self) -> list[RenderJob]:
        if self._decoder is not None:
            return self._emit_incremental(self._decoder)
        chunks = []
        while True:
            framed = len(self._unit_ends)
            if framed == self._emitted_units:
                return chunks
            end_unit = self._chunk_end(framed)
            if end_unit is None:
                return chunks
            end_frame = self._unit_ends[end_unit - 1]
            last = self._finished and end_unit == framed
            chunks.append(self._job(self._emitted_frames, end_frame, last))
            self._emitted_units, self._emitted_frames = end_unit, end_frame

    def _chunk_end(self, framed: int) -> int | None:
        """Unit index where the next chunk ends, or None when it cannot be rendered yet.

        A chunk holds `first_chunk_units` units at first, then `chunk_units`. When more units
        wait (the stream fell behind: its vocoding shares the worker with other streams), the
        chunk takes them too, up to `chunk_cap` units: one window then pays the receptive field
        once for all of them, and the samples are the same whatever the chunking.
        """
        start = self._emitted_units
        smallest = self.first_chunk_units if start == 0 else self.chunk_units
        largest = self.chunk_cap()
        if self._finished:
            return min(framed, start + largest)
        end_unit = min(framed, start + largest)
        while end_unit >= start + smallest:
            if self._has_right_context(end_unit):
                return self._fill_bucket(end_unit, min(framed, start + self.max_chunk_units))
            end_unit -= 1
        return None

    def _fill_bucket(self, end_unit: int, limit: int) -> int:
        """The chunk ending at `end_unit`, extended by the ready units whose frames still fit in
        the length its window is padded to anyway (`shape_bucket`): the forward pass costs the
        same, and the listener gets more audio from it (a 10-unit first chunk at official size
        grows from about 23 frames to 44 in its 64-frame pass). At most `limit` units."""
        bucket = shape_bucket(self._window_frames(end_unit))
        while (
            end_unit < limit
            and self._has_right_context(end_unit + 1)
            and self._window_frames(end_unit + 1) <= bucket
        ):
            end_unit += 1
        return end_unit

    def _has_right_context(self, end_unit: int) -> bool:
        return len(self._frames) >= self._unit_ends[end_unit - 1] + self.right_frames

    def _window_frames(self, end_unit: int) -> int:
        """Frames of the window of the next chunk if it ended at `end_unit` (see `_job`)."""
        start = max(0, self._emitted_frames - self.left_frames)
        return self._unit_ends[end_unit - 1] + self.right_frames - start

    def _job(self, first: int, end: int, last: bool) -> RenderJob:
        """Samples of frames [first, end) from a window that holds their whole receptive field."""
        start = max(0, first - self.left_frames)
        stop = min(len(self._frames), end + self.right_frames)
        hop = self.vocoder.hop_length
        return RenderJob(
            self._frames.window(start, stop),
            self._conditioning,
            (first - start) * hop,
            # The last chunk keeps everything to the true end (a transposed conv may add a
            # sample).
            None if last else (end - start) * hop,
            batchable=not last and stop == end + self.right_frames,
            left_padding_ok=start == first - self.left_frames,
        )

    # ---- audio of an incremental stream

    def _emit_incremental(self, decoder: IncrementalDecoder) -> list[RenderJob]:
        """Chunks that feed the decoder frames, then at the end a window for the rest.

        The first chunk takes as few whole `FIRST_STEP_FRAMES` as release `first_chunk_units`
        units, later chunks whole blocks of `STEP_FRAMES` frames (only those call lengths are
        warmed up, service/speech/incremental.py), once the blocks whose frames are final
        release `chunk_units` units (as windows do: fewer, larger calls cost less per
        frame than one call per block; at the end, any), and every such block while their
        units stay within `chunk_cap`. A chunk's audio is everything its frames release, up to
        the decoder's lag behind them, so chunks need not end on a unit.
        """
        chunks = []
        while feed := self._frames_due(decoder):
            first = self._fed_frames
            self._fed_frames += feed
            self._emitted_units = self._units_released(decoder, self._fed_frames)
            self._emitted_samples = decoder.released(self._fed_frames)
            chunks.append(
                RenderJob(
                    self._frames.window(first, self._fed_frames),
                    self._conditioning,
                    0,
                    None,
                    batchable=False,
                    decoder=decoder,
                )
            )
        if self._finished and len(self._frames) * decoder.hop > self._emitted_samples:
            chunks.append(self._last_window())
            self._emitted_units = len(self._unit_ends)
            self._fed_frames = len(self._frames)
            self._emitted_samples = len(self._frames) * decoder.hop
        return chunks

    def _frames_due(self, decoder: IncrementalDecoder) -> int:
        """Frames the next chunk feeds the decoder, or 0 (see `_emit_incremental`)."""
        available = len(self._frames) - self._fed_frames
        if not self.started and not self._finished:
            # Whole FIRST_STEP_FRAMES: the lengths whose kernels are built (`warm_up`).
            for count in range(FIRST_STEP_FRAMES, available + 1, FIRST_STEP_FRAMES):
                released = self._units_released(decoder, self._fed_frames + count)
                if released >= self.first_chunk_units:
                    return count
            return 0
        blocks = available // STEP_FRAMES
        smallest = 1 if self._finished else self.chunk_units
        chosen = 0
        for count in range(1, blocks + 1):
            released = self._units_released(decoder, self._fed_frames + count * STEP_FRAMES)
            units = released - self._emitted_units
            if chosen and units > self.chunk_cap():
                break
            if units >= smallest:
                chosen = count
        return chosen * STEP_FRAMES

    def _units_released(self, decoder: IncrementalDecoder, frames: int) -> int:
        """Units whose samples all come out once `frames` frames went in."""
        return bisect_right(self._unit_ends, decoder.released(frames) // decoder.hop)

    def _last_window(self) -> RenderJob:
        """The samples the decoder has not released, from a window with their left receptive
        field (or the stream's start), padded on the left to its bucket where it may be."""
        hop = self.vocoder.hop_length
        first_frame = self._emitted_samples // hop
        start = max(0, first_frame - self.left_frames)
        return RenderJob(
            self._frames.window(start, len(self._frames)),
            self._conditioning,
            self._emitted_samples - start * hop,
            None,
            batchable=False,
            left_padding_ok=start == first_frame - self.left_frames,
        )
