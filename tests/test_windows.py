"""Turn windows (service/units/windows.py), the bench that measures them
(service/bench/windows.py) and the realtime session's turn encoder
(service/gateway/realtime/turn_encoder.py), on the real tiny speech stacks, in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.audio.decode import decode_audio, load_audio_file
from service.audio.pcm import float_to_pcm16, pcm16_to_float
from service.bench.agreement import frames_equal
from service.bench.windows import windowed_units
from service.checkpoints.layout import BASE, EXPRESSIVE, VARIANTS
from service.gateway.realtime.turn_encoder import TurnEncoder
from service.speech.pipeline import SpeechStack
from service.units.tokens import Units, units_to_string
from service.units.windows import (
    Window,
    WindowPlan,
    check_keep_ms,
    join_units,
    keep_units,
)

RATE = 16000


@pytest.fixture(scope="module")
def stacks(layout) -> dict[str, SpeechStack]:  # noqa: ANN001
    return {variant: SpeechStack(layout, variant) for variant in VARIANTS}


@pytest.fixture(scope="module")
def speech(speech_file: Path) -> np.ndarray:
    """The speech file as the realtime buffer holds it: pcm16 (at 16 kHz here, no resampling)."""
    return pcm16_to_float(float_to_pcm16(load_audio_file(speech_file)))


# ---- plans


def test_plan_rounds_to_the_unit_grid_and_waits_for_right_context() -> None:
    base = WindowPlan(rate=24000, expressive=False, window=1.01, left=1.0, right=0.5)
    assert base.step == 960 and base.window == 24960 and base.left == 24000
    assert base.next_window(0, 24960 + 11999) is None
    assert base.next_window(0, 24960 + 12000) == Window(0, 0, 24960, 36960)
    # Later windows start `left` before what they keep.
    assert base.next_window(24960, 80000) == Window(960, 24960, 49920, 61920)
    assert base.last_window(49920) == Window(25920, 49920, None, None)
    expressive = WindowPlan(rate=24000, expressive=True, window=1.0, left=1.0, right=0)
    assert expressive.window == expressive.left == 48000  # 2 s: pitch and style grids too
    with pytest.raises(ValueError, match="unit grid"):
        WindowPlan(rate=11111, expressive=False, window=1, left=1, right=0)


def test_kept_stretch_in_milliseconds_and_on_the_grid() -> None:
    window = Window(48000, 96000, 144000, 160000)
    assert window.keep_ms(24000) == (2000, 4000)
    assert Window(0, 0, None, None).keep_ms(24000) == (0, None)
    assert check_keep_ms(2000, 4000, expressive=True) is None
    assert "multiple of 2000 ms" in (check_keep_ms(1000, 4000, expressive=True) or "")
    assert check_keep_ms(40, 1000, expressive=False) is None
    assert "multiple of 40 ms" in (check_keep_ms(50, None, expressive=False) or "")
    assert "after keep_from_ms" in (check_keep_ms(400, 400, expressive=False) or "")


def test_keep_units_cuts_each_stream_on_its_own_grid() -> None:
    units = Units(hubert=list(range(100)), pitch=list(range(50)), style=list(range(4)))
    kept = keep_units(units, 2000, 4000)
    assert kept.hubert == list(range(50, 100))
    assert kept.pitch == list(range(25, 50))
    assert kept.style == [2, 3]
    assert keep_units(units, 2000, None).style == [2, 3]
    joined = join_units([keep_units(units, 0, 2000), kept], expressive=True)
    assert joined == units


# ---- windows against whole-turn units, on the real tiny stacks


@pytest.mark.parametrize("variant", VARIANTS)
def test_windows_give_every_frame_and_agree_with_context(
    stacks: dict[str, SpeechStack], speech: np.ndarray, variant: str
) -> None:
    stack = stacks[variant]
    whole = stack.encode_units(speech)
    plan = WindowPlan(rate=RATE, expressive=stack.expressive, window=2, left=2, right=1)
    windowed, timings = windowed_units(stack, speech, plan)
    assert len(timings) == 5  # four windows and the tail
    # Same frame count per stream (`frames_equal` raises otherwise), units not all equal.
    shares = frames_equal(whole, windowed, stack.expressive)
    assert all(0.3 < share < 1.0 for share in shares.values()), shares
    # Context as long as the turn: every window sees the whole turn's audio except what lies
    # after its right context; the last window's right context is the turn's end.
    wide = WindowPlan(rate=RATE, expressive=stack.expressive, window=2, left=10, right=10)
    windowed, timings = windowed_units(stack, speech, wide)
    assert len(timings) == 1 and windowed == whole


def test_tail_of_a_window_is_the_whole_turn_shifted(
    stacks: dict[str, SpeechStack], speech: np.ndarray
) -> None:
    """A window that starts on the grid gives the frames the whole turn gives from there, when
    the encoder sees only local context (tiny models: one transformer layer, still global, so
    compare frame counts and the first stream exactly only where the input is identical)."""
    stack = stacks[EXPRESSIVE]
    start = 4 * RATE
    whole = stack.encode_units(speech)
    tail = stack.encode_units(speech[start:])
    assert len(tail.hubert) == len(whole.hubert) - start // 640
    assert len(tail.pitch or []) == len(whole.pitch or []) - start // 1280
    assert len(tail.style or []) == len(whole.style or []) - start // 16000


# ---- the realtime turn encoder


def run_turn_encoder(
    stack: SpeechStack, speech: np.ndarray, plan: WindowPlan | None, piece: float = 0.1
) -> tuple[str, int]:
    """Feed the turn to a TurnEncoder in `piece`-second appends, with the real stack as its
    speech worker (WAV decoded and encoded as the worker does); its tokens and windows sent."""
    pcm = float_to_pcm16(speech)

    sent_ahead: list[tuple[bool, bool]] = []  # (a window rather than the tail, sent ahead)

    async def encode_window(
        wav: bytes, keep_from_ms: int, keep_to_ms: int | None, *, ahead: bool
    ) -> Units:
        sent_ahead.append((keep_to_ms is not None, ahead))
        units = await asyncio.to_thread(stack.encode_units, decode_audio(wav))
        return keep_units(units, keep_from_ms, keep_to_ms)

    async def encode_whole(wav: bytes) -> str:
        units = await asyncio.to_thread(stack.encode_units, decode_audio(wav))
        return units_to_string(units, expressive=stack.expressive)

    async def scenario() -> tuple[str, int]:
        tasks: set[asyncio.Task] = set()

        def spawn(work) -> asyncio.Task:  # noqa: ANN001
            task = asyncio.create_task(work)
            tasks.add(task)
            return task

        encoder = TurnEncoder(
            RATE,
            plan,
            expressive=stack.expressive,
            encode_window=encode_window,
            encode_whole=encode_whole,
            spawn=spawn,
            more_ready=lambda: None,
        )
        step = int(piece * RATE) * 2
        for end in range(step, len(pcm) + step, step):
            available = min(end, len(pcm)) // 2
            encoder.advance(0, available, lambda a, b: pcm[2 * a : 2 * b])
            await asyncio.gather(*tasks)  # an encoder fast enough to keep up
        return (await encoder.tokens(0, pcm)).tokens, encoder.windows_sent

    result = asyncio.run(scenario())
    # Windows go to the worker as work nobody waits for yet; the tail, when the turn has
    # ended, as work someone does (service/speech_worker/priority.py).
    assert all(window == ahead for window, ahead in sent_ahead)
    return result


@pytest.mark.parametrize("variant", VARIANTS)
def test_turn_encoder_sends_the_planned_windows(
    stacks: dict[str, SpeechStack], speech: np.ndarray, variant: str
) -> None:
    stack = stacks[variant]
    plan = WindowPlan(rate=RATE, expressive=stack.expressive, window=2, left=2, right=1)
    tokens, sent = run_turn_encoder(stack, speech, plan)
    expected, timings = windowed_units(stack, speech, plan)
    assert sent == len(timings) - 1 == 4
    assert tokens == units_to_string(expected, expressive=stack.expressive)
    assert tokens != stack.encode_string(speech)


def test_turn_encoder_leaves_short_turns_and_no_plan_exact(
    stacks: dict[str, SpeechStack], speech: np.ndarray
) -> None:
    stack = stacks[BASE]
    exact = stack.encode_string(speech)
    assert run_turn_encoder(stack, speech, None) == (exact, 0)
    # 4 s windows with 4 s of context each side: the first window would be used only once a
    # second one is kept (12 s of audio), so a 9 s turn sends none and is encoded whole.
    plan = WindowPlan(rate=RATE, expressive=False, window=4, left=4, right=4)
    assert run_turn_encoder(stack, speech, plan) == (exact, 0)


# ---- the benchmark's command


def test_bench_windows_prints_and_writes_its_table(layout, speech_file: Path, tmp_path) -> None:  # noqa: ANN001
    import subprocess
    import sys

    output = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "bench",
            "windows",
            "--checkpoints",
            str(layout.root),
            "--audio",
            str(speech_file),
            "--plans",
            "2/2/1; 2/10/10",
            "--variants",
            BASE,
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(f"| {BASE}")]
    assert len(rows) == 2
    narrow, wide = (row.split(" | ") for row in rows)
    assert narrow[2] == "window 2 s, left 2 s, right 1 s" and narrow[3] != "100.0%"
    assert narrow[5] == "3.13 s"  # the tail: 2 s of left context and 9.13 - 8 s
    assert wide[3] == "100.0%" and wide[4] == "100.0%" and wide[5] == "9.13 s"
    assert "bench-windows" in output.read_text() and rows[0] in output.read_text()


def test_a_tail_that_would_cover_the_whole_turn_is_an_exact_whole_encode(
    stacks: dict[str, SpeechStack], speech: np.ndarray
) -> None:
    """A 12.3 s turn ends while its first 4/4/4 window is still being encoded: the tail would
    start at the first sample, so the turn is encoded whole (exact) and no window is used."""
    stack = stacks[BASE]
    turn = np.concatenate([speech, speech[: int(3.2 * RATE)]])
    pcm = float_to_pcm16(turn)

    async def encode_window(
        wav: bytes, keep_from_ms: int, keep_to_ms: int | None, *, ahead: bool
    ) -> Units:
        units = await asyncio.to_thread(stack.encode_units, decode_audio(wav))
        return keep_units(units, keep_from_ms, keep_to_ms)

    async def encode_whole(wav: bytes) -> str:
        return stack.encode_string(decode_audio(wav))

    async def scenario() -> tuple[str, int, int]:
        encoder = TurnEncoder(
            RATE,
            WindowPlan(rate=RATE, expressive=False, window=4, left=4, right=4),
            expressive=False,
            encode_window=encode_window,
            encode_whole=encode_whole,
            spawn=asyncio.ensure_future,
            more_ready=lambda: None,
        )
        encoder.advance(0, len(pcm) // 2, lambda a, b: pcm[2 * a : 2 * b])
        result = await encoder.tokens(0, pcm)
        return result.tokens, result.windows, encoder.windows_sent

    tokens, windows, sent = asyncio.run(scenario())
    assert sent == 1 and windows == 0
    assert tokens == stack.encode_string(pcm16_to_float(pcm))
