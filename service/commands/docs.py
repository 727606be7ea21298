"""`config-reference`: print or write the generated configuration reference."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.commands.common import log


def run(args: argparse.Namespace) -> int:
    from service.config_reference import render_reference

    text = render_reference()
    if args.output is None:
        print(text, end="")
    else:
        Path(args.output).write_text(text)
        log(f"wrote {args.output}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("config-reference", help="print the configuration reference")
    parser.add_argument("-o", "--output", default=None, help="write to this file instead")
    parser.set_defaults(handler=run)
