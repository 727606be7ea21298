"""Encoding a turn window by window while it is spoken, and joining the windows' units.

The official HuBERT (and the style encoder) attend over the whole input, so the exact units of a
turn are known only once it ends, and encoding a 9 s turn then takes most of a second at
official size (docs/benchmarks.md). A realtime session instead encodes the turn in *windows* as
its audio arrives: each window sends `left` seconds of context before the stretch whose units it
keeps and `right` seconds after it; when the turn ends only the tail is left to encode. The
units of a window's middle can differ from the whole-turn units (the encoders see less context);
docs/realtime.md#encoding-while-the-user-speaks gives the measured agreement and the settings.

Every unit stream has its own frame grid (docs/format.md#stream-rates-and-de-duplication): a
HuBERT unit per 640 samples at 16 kHz, a pitch unit per 1280, a style unit per 16000. A window
must start on a sample where every grid of its variant has a frame boundary, so that frame `i`
of the window is frame `start / hop + i` of the turn: `alignment_seconds` is that step (0.04 s
for base, 2 s for expressive). Windows are planned in samples at the caller's rate (the
gateway's input rate); the speech worker cuts each window's units in 16 kHz samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from service.units.tokens import StreamKind, Units

WORKER_RATE = 16000
# Samples per unit at 16 kHz (docs/format.md#stream-rates-and-de-duplication). HuBERT's
# timestamps use 24.99 units/s, but its frames are 640 samples apart.
UNIT_HOP_SAMPLES: dict[StreamKind, int] = {"hubert": 640, "pitch": 1280, "style": 16000}
BASE_ALIGNMENT = Fraction(UNIT_HOP_SAMPLES["hubert"], WORKER_RATE)  # 0.04 s
EXPRESSIVE_ALIGNMENT = Fraction(2)  # lcm of 0.04 s, 0.08 s and 1 s


def alignment_seconds(expressive: bool) -> Fraction:
    """The step window starts must lie on for a variant's unit grids."""
    return EXPRESSIVE_ALIGNMENT if expressive else BASE_ALIGNMENT


@dataclass(frozen=True)
class Window:
    """One encode of a turn's audio, in samples from the turn's first sample.

    The audio `[start, end)` is encoded (`end` None: to the turn's end) and the units of
    `[keep_from, keep_to)` are kept (`keep_to` None: to the end of the output).
    """

    start: int
    keep_from: int
    keep_to: int | None
    end: int | None

    def keep_ms(self, rate: int) -> tuple[int, int | None]:
        """The kept stretch in milliseconds from the window's first sample (what the worker
        is told); exact, since window edges lie on the alignment grid."""
        keep_from = (self.keep_from - self.start) * 1000 // rate
        if self.keep_to is None:
            return keep_from, None
        return keep_from, (self.keep_to - self.start) * 1000 // rate


class WindowPlan:
    """Where a turn's windows go, for one variant, at one sample rate.

    `window`, `left` and `right` are seconds; `window` and `left` are rounded up to the
    variant's alignment so that every window starts on the grid.
    """

    def __init__(
        self, *, rate: int, expressive: bool, window: float, left: float, right: float
    ) -> None:
        if window <= 0:
            raise ValueError("a window plan needs a window longer than 0 s")
        step = alignment_seconds(expressive) * rate
        if step.denominator != 1:
            raise ValueError(f"{rate} Hz has no sample on the {float(step / rate)} s unit grid")
        self.rate = rate
        self.step = int(step)
        self.window = _round_up(round(window * rate), self.step)
        self.left = _round_up(round(left * rate), self.step)
        self.right = max(0, round(right * rate))

    def next_window(self, kept_to: int, available: int) -> Window | None:
        """The window after `kept_to` if `available` samples cover it and its right context.

        The first window waits until the windows that fit keep more than the left context:
        before that the tail's encode would start at the turn's first sample anyway (and cover
        the whole turn), so windows would be wasted work."""
        if kept_to == 0 and available < self.first_useful_end():
            return None
        keep_to = kept_to + self.window
        end = keep_to + self.right
        if available < end:
            return None
        return Window(max(0, kept_to - self.left), kept_to, keep_to, end)

    def first_useful_end(self) -> int:
        """How much audio a turn needs before its first window is sent."""
        kept = self.window
        while kept <= self.left:
            kept += self.window
        return kept + self.right

    def last_window(self, kept_to: int) -> Window:
        """The turn's tail: from `kept_to` (with left context) to the end of the turn."""
        return Window(max(0, kept_to - self.left), kept_to, None, None)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def keep_units(units: Units, keep_from_ms: int, keep_to_ms: int | None) -> Units:
    """The units of a window's kept stretch (milliseconds from the window's first sample)."""

    def cut(values: list[int] | None, kind: StreamKind) -> list[int] | None:
        if values is None:
            return None
        hop = UNIT_HOP_SAMPLES[kind]
        first = keep_from_ms * (WORKER_RATE // 1000) // hop
        if keep_to_ms is None:
            return values[first:]
        return values[first : keep_to_ms * (WORKER_RATE // 1000) // hop]

    return Units(
        hubert=cut(units.hubert, "hubert") or [],
        pitch=cut(units.pitch, "pitch"),
        style=cut(units.style, "style"),
    )


def check_keep_ms(keep_from_ms: int, keep_to_ms: int | None, expressive: bool) -> str | None:
    """Why a kept stretch is not on the variant's grid (None when it is)."""
    step_ms = alignment_seconds(expressive) * 1000
    for name, value in (("keep_from_ms", keep_from_ms), ("keep_to_ms", keep_to_ms)):
        if value is None:
            continue
        if value < 0 or Fraction(value) % step_ms:
            return f"{name} must be a multiple of {float(step_ms):g} ms for this model, got {value}"
    if keep_to_ms is not None and keep_to_ms <= keep_from_ms:
        return f"keep_to_ms ({keep_to_ms}) must be after keep_from_ms ({keep_from_ms})"
    return None


def join_units(parts: list[Units], expressive: bool) -> Units:
    """The units of consecutive windows as one turn's."""
    hubert = [value for part in parts for value in part.hubert]
    if not expressive:
        return Units(hubert=hubert)
    return Units(
        hubert=hubert,
        pitch=[value for part in parts for value in part.pitch or []],
        style=[value for part in parts for value in part.style or []],
    )
