"""`make-checkpoints`: write tiny (or official-size, random) checkpoints in the official layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.commands.common import log


def run(args: argparse.Namespace) -> int:
    from service.checkpoints.make import make_checkpoints

    make_checkpoints(Path(args.directory), seed=args.seed, size=args.size, progress=log)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("make-checkpoints", help="write tiny official-layout checkpoints")
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--size",
        choices=["tiny", "official"],
        default="tiny",
        help="official = real speech-model geometry with random weights (for benchmarks)",
    )
    parser.set_defaults(handler=run)
