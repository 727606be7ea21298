"""`bench precision`: bfloat16 encoders and vocoder against float32, side by side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.bench.precision import signal_to_error_db
from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout


def test_signal_to_error_ratio() -> None:
    signal = np.array([1.0, -1.0, 1.0, -1.0], dtype=np.float32)
    assert signal_to_error_db(signal, signal) == float("inf")
    assert signal_to_error_db(signal, signal * 1.1) == pytest.approx(20.0)  # error = 0.1 x signal


def test_bench_precision_prints_and_writes_its_table(
    layout: CheckpointLayout, speech_file: Path, tmp_path: Path
) -> None:
    output = tmp_path / "benchmarks.md"
    command = [sys.executable, "-m", "service", "bench", "precision"]
    options = ["--checkpoints", str(layout.root), "--audio", str(speech_file), "--repeats", "1"]
    done = subprocess.run(
        [*command, *options, "--output", str(output)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    rows = {
        cells[0]: cells[1:]
        for cells in (
            [cell.strip() for cell in line.strip("|").split("|")]
            for line in done.stdout.splitlines()
            if line.startswith("| spirit-lm-")
        )
    }
    assert set(rows) == {BASE, EXPRESSIVE}
    for variant, cells in rows.items():
        encode32, encode16, speedup = float(cells[0]), float(cells[1]), cells[2]
        assert encode32 > 0 and encode16 > 0 and speedup.endswith("x")
        assert float(cells[3]) > 0 and float(cells[8]) > 0  # bfloat16 in the plain layout
        shares = [float(share.rstrip("%")) for share in cells[4].split(" / ")]
        assert len(shares) == (3 if variant == EXPRESSIVE else 1)
        assert all(80.0 <= share <= 100.0 for share in shares), shares
        assert shares[0] < 100.0  # bfloat16 HuBERT changes some units: it really ran
        snr = float(cells[9].removesuffix(" dB"))
        assert 20.0 < snr < 80.0  # bfloat16 audio is close to float32, never exact
        assert 0 < float(cells[10]) < 0.5
    assert "bench-precision" in output.read_text()
