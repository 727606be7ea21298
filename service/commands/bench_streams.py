"""`bench streams`: concurrent vocoder streams through the speech worker's scheduler, in-process."""

from __future__ import annotations

import argparse
import shlex
import sys

from service.commands.common import log
from service.errors import SpiritError


def run(args: argparse.Namespace) -> int:
    from service.bench.streams import run as run_benchmark

    command = "spiritlm-serve " + shlex.join(sys.argv[1:])
    try:
        run_benchmark(args, log, command)
    except ValueError as error:
        raise SpiritError(str(error)) from None
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from service.bench.streams import add_arguments

    parser = commands.add_parser(
        "streams",
        help="benchmark concurrent vocoder streams (first chunk, stalls, batching) without servers",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
