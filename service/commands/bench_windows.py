"""`bench windows`: realtime turns encoded window by window against whole-turn units."""

from __future__ import annotations

import argparse

from service.commands.common import register_in_process_bench


def register(commands: argparse._SubParsersAction) -> None:
    register_in_process_bench(
        commands,
        "windows",
        "measure how realtime turn windows agree with whole-turn units, without servers",
        "service.bench.windows",
    )
