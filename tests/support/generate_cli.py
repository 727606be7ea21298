"""Runs `spiritlm-serve generate --json` and checks the speech segments it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import soundfile

from service.checkpoints.layout import CheckpointLayout
from tests.support.paths import REPO


def generate_command(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`spiritlm-serve generate --json ARGS`, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "service", "generate", "--json", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(args: list[str], env: dict[str, str], timeout: float) -> tuple[dict[str, Any], str]:
    """The JSON record the command prints, and its stderr (progress lines)."""
    completed = generate_command(args, env, timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # stdout is the JSON record and nothing else (vLLM's own logs must not end up there).
    return json.loads(completed.stdout), completed.stderr


def check_speech_segment(layout: CheckpointLayout, variant: str, segment: dict[str, Any]) -> None:
    from service.speech.pipeline import SpeechStack

    wav, rate = soundfile.read(segment["audio"], dtype="float32")
    assert rate == 16000
    # The command vocodes with speaker 2 and duration prediction, as the reference's decode.
    expected = SpeechStack(layout, variant).decode(segment["tokens"], speaker=2)
    assert len(wav) == len(expected) > 0
    assert len(wav) % 640 == 0
    assert segment["seconds"] == round(len(wav) / 16000, 3)
    assert np.max(np.abs(wav - expected)) < 2 / 32768 + 1e-6  # PCM_16 rounding
