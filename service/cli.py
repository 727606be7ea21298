"""`spiritlm-serve` command line: one sub-command per job, settings shared with the services."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from service.commands import (
    bench,
    config_reference,
    gateway,
    generate,
    lm,
    make_checkpoints,
    speech,
    speech_worker,
    up,
)
from service.commands.common import log
from service.errors import SpiritError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spiritlm-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    modules = (make_checkpoints, speech, generate, lm, speech_worker, gateway, up)
    for module in (*modules, bench, config_reference):
        module.register(commands)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with the flags it does not know in `extra_args`.

    Only the commands that pass such flags on may get any (`passthrough`: vLLM's flags of `lm`
    and `up`); for the others they are an error.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (SpiritError, ValueError, OSError) as error:
        # One line, whatever the message holds, so that scripts can show or grep it.
        log("error: " + " ".join(str(error).splitlines()))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
