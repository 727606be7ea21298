"""`bench windows`: realtime turns encoded window by window against whole-turn units."""

from __future__ import annotations

import argparse
import shlex
import sys

from service.commands.common import log
from service.errors import SpiritError


def run(args: argparse.Namespace) -> int:
    from service.bench.windows import run as run_benchmark

    command = "spiritlm-serve " + shlex.join(sys.argv[1:])
    try:
        run_benchmark(args, log, command)
    except ValueError as error:
        raise SpiritError(str(error)) from None
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from service.bench.windows import add_arguments

    parser = commands.add_parser(
        "windows",
        help="measure how realtime turn windows agree with whole-turn units, without servers",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
