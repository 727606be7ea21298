"""`bench precision`: the speech models in bfloat16 against float32 (time, units, audio)."""

from __future__ import annotations

import argparse

from service.commands.common import register_in_process_bench


def register(commands: argparse._SubParsersAction) -> None:
    register_in_process_bench(
        commands,
        "precision",
        "measure the encoders and the vocoder in bfloat16 against float32, without servers",
        "service.bench.precision",
    )
