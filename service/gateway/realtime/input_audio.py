"""A session's input side as a state machine: the input audio buffer and turn detection.

States: *listening* (no speech; the buffer keeps only the last `prefix_padding_ms` so a turn
can start a little before the detected speech) and *speaking* (server VAD heard speech; the
buffer grows until the VAD hears `silence_duration_ms` of silence, or the turn reaches the
buffer limit, and the utterance is handed out for commit). A pause within a turn hands out the
utterance so far as a candidate (`PauseDetected`): the turn, if the pause ends it. Without
turn detection the buffer just grows until the client commits or clears it.

All positions are in samples of the session's input rate, counted from the first sample the
client appended; the protocol reports them in milliseconds. Appended audio is in the session's
input format; G.711 is expanded to pcm16 here (audio_format.py), so the buffer is always pcm16.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.audio.pcm import pcm16_to_float, pcm16_wav
from service.gateway.realtime import audio_format
from service.gateway.realtime.protocol import ProtocolError
from service.gateway.realtime.vad import (
    SpeechPaused,
    SpeechStarted,
    SpeechStopped,
    VadEvent,
    VadStream,
)

BYTES_PER_SAMPLE = 2
MIN_COMMIT_MS = 100  # shorter commits are refused, as the reference API does
PADDING_SLACK_MS = 64  # the VAD decides a window (32 ms) after it starts; keep a bit more


@dataclass(frozen=True)
class Utterance:
    """A committed stretch of input audio (pcm16 at the input rate)."""

    pcm16: bytes
    start_ms: int
    end_ms: int
    first_sample: int | None = None  # its first sample's position in the input buffer

    def wav(self, rate: int) -> bytes:
        """The utterance as a WAV file at its own rate (the speech worker resamples it whole)."""
        return pcm16_wav(self.pcm16, rate)


@dataclass(frozen=True)
class TurnDetected:
    """The VAD heard a whole turn; commit `utterance`."""

    stopped: SpeechStopped
    utterance: Utterance


@dataclass(frozen=True)
class PauseDetected:
    """The speaker paused: `utterance` is the turn if the pause turns out to end it."""

    utterance: Utterance


InputEvent = SpeechStarted | TurnDetected | PauseDetected


class InputAudio:
    def __init__(
        self,
        rate: int,
        max_seconds: float,
        *,
        offset_ms: int = 0,
        fmt: str = audio_format.PCM16,
    ) -> None:
        self.rate = rate
        self.format = fmt
        self.vad: VadStream | None = None
        self.max_samples = int(max_seconds * rate)
        self.offset_ms = offset_ms  # session time of this buffer's first sample
        self._data = bytearray()
        self._start = 0  # sample index of _data[0]
        self._total = 0  # samples appended to this buffer
        self._turn_start: int | None = None
        self._prefix_samples = 0

    def set_vad(self, vad: VadStream | None) -> None:
        """Start (or stop) turn detection; a new VAD starts listening at `now_ms`."""
        self.vad = vad
        self._turn_start = None
        self._prefix_samples = self._ms_to_samples(vad.settings.prefix_padding_ms) if vad else 0

    @property
    def speaking(self) -> bool:
        return self.vad is not None and self.vad.speaking

    @property
    def paused(self) -> bool:
        """Whether the turn being heard is in a pause that may end it (`PauseDetected` was
        handed out and speech has not resumed)."""
        return self.vad is not None and self.vad.paused

    @property
    def buffered_samples(self) -> int:
        return len(self._data) // BYTES_PER_SAMPLE

    def now_ms(self) -> int:
        return self._to_ms(self._total)

    @property
    def runs_off_loop(self) -> bool:
        """Whether `append` does CPU work (VAD, G.711 expansion) that belongs off the loop."""
        return self.vad is not None or self.format != audio_format.PCM16

    def append(self, data: bytes) -> list[InputEvent]:
        """Add audio in the input format; with a VAD, the events it raised (CPU-bound: see
        `runs_off_loop`)."""
        pcm16 = audio_format.to_pcm16(self.format, data)
        if len(pcm16) % BYTES_PER_SAMPLE:
            raise ProtocolError(
                "invalid_value",
                f"audio: pcm16 needs an even number of bytes, got {len(pcm16)}",
                param="audio",
            )
        samples = len(pcm16) // BYTES_PER_SAMPLE
        if self.vad is None and self.buffered_samples + samples > self.max_samples:
            raise ProtocolError(
                "input_audio_buffer_full",
                f"the input audio buffer holds at most {self.max_samples / self.rate:g} s; "
                "commit or clear it",
                param="audio",
            )
        self._data += pcm16
        self._total += samples
        if self.vad is None:
            return []
        audio = pcm16_to_float(pcm16)
        events: list[InputEvent] = []
        for event in self.vad.feed(audio):
            events.append(self._on_vad(event))
        if self.speaking and self._turn_samples() > self.max_samples:
            stopped = self.vad.force_stop()
            if stopped is not None:
                events.append(self._on_vad(stopped))
        if not self.speaking:
            keep = self._prefix_samples + self._ms_to_samples(PADDING_SLACK_MS)
            self._drop_before(self._total - keep)
        return events

    def commit_all(self) -> Utterance:
        """Everything buffered (a client commit)."""
        if self.buffered_samples < self._ms_to_samples(MIN_COMMIT_MS):
            raise ProtocolError(
                "input_audio_buffer_commit_empty",
                f"buffer too small: expected at least {MIN_COMMIT_MS} ms of audio, "
                f"have {self._samples_to_ms(self.buffered_samples)} ms",
            )
        utterance = Utterance(
            bytes(self._data), self._to_ms(self._start), self._to_ms(self._total), self._start
        )
        self._drop_before(self._total)
        self._turn_start = None
        if self.vad is not None:
            self.vad.force_stop()  # the client ended the turn; the VAD must not end it again
        return utterance

    def clear(self) -> None:
        self._drop_before(self._total)
        self._turn_start = None
        if self.vad is not None:
            self.vad.force_stop()

    def _on_vad(self, event: VadEvent) -> InputEvent:
        if isinstance(event, SpeechStarted):
            start = self._at_ms(event.audio_start_ms) - self._prefix_samples
            self._turn_start = max(start, self._start)
            return event
        end = min(self._at_ms(event.audio_end_ms), self._total)
        start = self._start if self._turn_start is None else self._turn_start
        utterance = Utterance(self.audio(start, end), self._to_ms(start), self._to_ms(end), start)
        if isinstance(event, SpeechPaused):
            return PauseDetected(utterance)
        self._turn_start = None
        return TurnDetected(event, utterance)

    def _turn_samples(self) -> int:
        start = self._start if self._turn_start is None else self._turn_start
        return self._total - start

    def growing_turn(self) -> tuple[int, int] | None:
        """(first sample, end) of the turn being heard: the speech the VAD is following, or
        without turn detection the whole buffer; None when there is none."""
        if self.vad is not None:
            return (self._turn_start, self._total) if self._turn_start is not None else None
        return (self._start, self._total) if self._data else None

    def audio(self, start: int, end: int) -> bytes:
        """The buffered pcm16 of samples [start, end) (positions as in `growing_turn`)."""
        begin = max(0, start - self._start) * BYTES_PER_SAMPLE
        stop = max(0, end - self._start) * BYTES_PER_SAMPLE
        return bytes(self._data[begin:stop])

    def _drop_before(self, sample: int) -> None:
        drop = sample - self._start
        if drop > 0:
            del self._data[: drop * BYTES_PER_SAMPLE]
            self._start = sample

    def _ms_to_samples(self, ms: int) -> int:
        return ms * self.rate // 1000

    def _samples_to_ms(self, samples: int) -> int:
        return samples * 1000 // self.rate

    def _to_ms(self, sample: int) -> int:
        """Session time of a sample position."""
        return self.offset_ms + self._samples_to_ms(sample)

    def _at_ms(self, ms: int) -> int:
        """Sample position of a session time."""
        return self._ms_to_samples(ms - self.offset_ms)
