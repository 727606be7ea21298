"""`bench streams`: concurrent vocoder streams through the speech worker's scheduler, in-process."""

from __future__ import annotations

import argparse

from service.commands.common import register_in_process_bench


def register(commands: argparse._SubParsersAction) -> None:
    register_in_process_bench(
        commands,
        "streams",
        "benchmark concurrent vocoder streams (first chunk, stalls, batching) without servers",
        "service.bench.streams",
    )
