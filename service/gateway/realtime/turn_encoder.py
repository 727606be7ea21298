"""Encoding a realtime turn while it is spoken, so that little is left when it ends.

While a turn grows (server VAD heard speech, or a manual-mode buffer fills), `TurnEncoder`
sends the speech worker one window at a time as soon as the audio covers it and its right
context (service/units/windows.py plans them); each answer keeps the units of the window's
middle. When the turn is committed, or a pause makes it a candidate, only the tail is left: it
is encoded with its left context and joined to the windows' units. One window per session is
in flight at a time; the next one is sent when it finishes or when more audio arrives.

A turn too short to have been windowed is encoded whole, as when windowing is off
(`WindowPlan.next_window` sends none until the tail would no longer start at the first sample).
Setting `realtime_encode_window_seconds` to 0 turns windowing off: every turn is encoded whole.
Units of a windowed turn can differ from whole-turn units, since the encoders see less context:
docs/realtime.md#encoding-while-the-user-speaks has the measured agreement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from service.audio.pcm import pcm16_wav
from service.units.tokens import Units, units_to_string
from service.units.windows import (
    UNIT_HOP_SAMPLES,
    WORKER_RATE,
    Window,
    WindowPlan,
    join_units,
)

logger = logging.getLogger(__name__)
HUBERT_HOP_MS = UNIT_HOP_SAMPLES["hubert"] * 1000 // WORKER_RATE  # 40 ms per HuBERT unit


class EncodeWindow(Protocol):
    """The speech worker's encode of a window: WAV bytes and the kept stretch -> kept units.

    `ahead`: sent before anyone waits for it (a window of a turn still being spoken), so the
    worker lets it in after work someone waits for (service/speech_worker/priority.py). A tail
    goes as waited-for work even for a pause's candidate turn: a candidate that ends the turn
    is needed `silence_duration_ms` after the pause began, and one that does not is dropped
    when speech resumes (connection.py)."""

    def __call__(
        self, wav: bytes, keep_from_ms: int, keep_to_ms: int | None, *, ahead: bool
    ) -> Awaitable[Units]: ...


EncodeWhole = Callable[[bytes], Coroutine[Any, Any, str]]
Spawn = Callable[[Any], "asyncio.Task[Any]"]


class TurnTokens(NamedTuple):
    """A turn's token string, and how many windows went into it (0: encoded whole)."""

    tokens: str
    windows: int


@dataclass
class _TurnWindows:
    """The windows of one turn: those encoded, in order, and the one in flight."""

    start: int  # the turn's first sample in the input buffer
    encoded: list[tuple[Window, Units]] = field(default_factory=list)
    running: tuple[Window, asyncio.Task[None]] | None = None
    failed: bool = False

    @property
    def kept_to(self) -> int:
        if not self.encoded:
            return 0
        return self.encoded[-1][0].keep_to or 0

    @property
    def busy(self) -> bool:
        return self.running is not None and not self.running[1].done()


class TurnEncoder:
    """Windows of the turn in progress for one realtime session (see the module docstring)."""

    def __init__(
        self,
        rate: int,
        plan: WindowPlan | None,
        *,
        expressive: bool,
        encode_window: EncodeWindow,
        encode_whole: EncodeWhole,
        spawn: Spawn,
        more_ready: Callable[[], None],
    ) -> None:
        self.rate = rate
        self.plan = plan
        self.expressive = expressive
        self._encode_window = encode_window
        self._encode_whole = encode_whole
        self._spawn = spawn
        self._more_ready = more_ready  # called when a window finished: the next may be ready
        self._turn: _TurnWindows | None = None
        self.windows_sent = 0

    def advance(
        self, turn_start: int | None, available: int, audio: Callable[[int, int], bytes]
    ) -> None:
        """Send the next window of the turn starting at `turn_start` if the audio covers it.

        `available` is the input buffer's end (in samples, like `turn_start`); `audio(a, b)`
        returns the buffer's pcm16 of samples [a, b).
        """
        if self.plan is None or turn_start is None:
            return
        turn = self._turn
        if turn is None or turn.start != turn_start:
            turn = self._turn = _TurnWindows(turn_start)
        if turn.failed or turn.busy:
            return
        window = self.plan.next_window(turn.kept_to, available - turn_start)
        if window is None or window.end is None:  # next_window always gives the end
            return
        wav = pcm16_wav(audio(turn_start + window.start, turn_start + window.end), self.rate)
        turn.running = (window, self._spawn(self._run_window(turn, window, wav)))
        self.windows_sent += 1

    async def _run_window(self, turn: _TurnWindows, window: Window, wav: bytes) -> None:
        keep_from_ms, keep_to_ms = window.keep_ms(self.rate)
        try:
            units = await self._encode_window(wav, keep_from_ms, keep_to_ms, ahead=True)
        except Exception as error:  # noqa: BLE001 - any failure: the turn is encoded whole
            logger.warning("encoding a turn window failed, the turn is encoded whole: %s", error)
            turn.failed = True
            return
        assert keep_to_ms is not None  # only the tail keeps to the end
        expected = (keep_to_ms - keep_from_ms) // HUBERT_HOP_MS
        if len(units.hubert) != expected:
            # E.g. a worker that ignores the kept stretch (an older version): not joinable.
            logger.warning(
                "a turn window came back with %d units instead of %d: the turn is encoded whole",
                len(units.hubert),
                expected,
            )
            turn.failed = True
            return
        turn.encoded.append((window, units))
        if self._turn is turn:
            self._more_ready()

    def tokens(self, turn_start: int | None, pcm16: bytes) -> Coroutine[Any, Any, TurnTokens]:
        """The token string of an utterance starting at `turn_start` (sample in the input
        buffer) with samples `pcm16`: its windows and tail, or the whole when none were sent.
        The turn's windows are taken now, so the turn may end before the coroutine runs."""
        turn = self._turn
        if turn is None or turn.start != turn_start or self.plan is None:
            return self._whole(pcm16)
        return self._tokens(turn, self.plan, pcm16)

    async def _whole(self, pcm16: bytes) -> TurnTokens:
        return TurnTokens(await self._encode_whole(pcm16_wav(pcm16, self.rate)), 0)

    async def _tokens(self, turn: _TurnWindows, plan: WindowPlan, pcm16: bytes) -> TurnTokens:
        length = len(pcm16) // 2
        running = turn.running
        if running is not None and (running[0].keep_to or 0) <= length:
            await asyncio.wait({running[1]})  # a window this utterance can use
        # The windows that lie inside this utterance (a pause candidate may end before the
        # right context of the last one).
        encoded = [(w, u) for w, u in turn.encoded if w.keep_to is not None and w.keep_to <= length]
        if turn.failed or not encoded:
            return await self._whole(pcm16)
        tail = plan.last_window(encoded[-1][0].keep_to or 0)
        if tail.start == 0:
            # The tail would cover the whole turn anyway (windows were still to come when it
            # ended): encoding it whole is as cheap, and exact.
            return await self._whole(pcm16)
        wav = pcm16_wav(pcm16[tail.start * 2 :], self.rate)
        keep_from_ms, _ = tail.keep_ms(self.rate)
        try:
            tail_units = await self._encode_window(wav, keep_from_ms, None, ahead=False)
        except Exception as error:  # noqa: BLE001 - the whole encode reports what is wrong
            logger.warning("encoding a turn's tail failed, the turn is encoded whole: %s", error)
            return await self._whole(pcm16)
        most = (length - tail.keep_from) * 1000 // self.rate // HUBERT_HOP_MS + 1
        if len(tail_units.hubert) > most:
            logger.warning("a turn's tail came back with too many units: encoded whole")
            return await self._whole(pcm16)
        parts = [units for _, units in encoded]
        joined = join_units([*parts, tail_units], self.expressive)
        return TurnTokens(units_to_string(joined, expressive=self.expressive), len(parts))
