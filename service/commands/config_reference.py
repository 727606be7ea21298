"""`config-reference`: docs/configuration.md, generated from the parsers of the server commands.

Each row is a flag as a user types it, with the environment variable and the default of its
setting (service/config.py: `SettingFlag`), so the reference cannot drift from the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from service.commands import gateway, lm, speech_worker, up
from service.commands.common import add_checkpoint_flags, log
from service.config import SettingFlag

INTRO = (
    "Generated from the command-line parsers by `spiritlm-serve config-reference -o "
    "docs/configuration.md`; a test keeps it in sync. A setting is a flag and an environment "
    "variable; a flag given on the command line wins over the environment. Environment "
    "variables of lists are comma-separated."
)
SECTIONS = (
    ("speech-worker", "The speech tokenizer and streaming vocoder service."),
    ("gateway", "The API process in front of the workers."),
    (
        "up",
        "The LM worker, the speech worker and the gateway on one machine. `up` takes every flag "
        "of `gateway` except `--lm-url` and `--speech-url` (it starts the workers itself) and "
        "gives them to its gateway; the speech worker's flags below, for its speech worker; its "
        "own ports and log directory; and vLLM's flags (`vllm serve --help`) for its LM worker, "
        "checked with vLLM's own parser before anything starts. Any other flag is an error.",
    ),
    ("lm", "The LM worker (vLLM). Flags not listed here are passed to vLLM unchanged."),
)
CHECKPOINT_COMMANDS = (
    "The commands that load checkpoints in their own process (`tokenize`, `synthesize`, "
    "`generate`, `bench lm`, `bench report`) take these."
)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    commands = argparse.ArgumentParser(prog="spiritlm-serve").add_subparsers()
    for module in (speech_worker, gateway, up, lm):
        module.register(commands)
    checkpoints = argparse.ArgumentParser()
    add_checkpoint_flags(checkpoints)
    return {**commands.choices, "checkpoints": checkpoints}


def _value(value: Any) -> str:
    if value is None or value == [] or value is PydanticUndefined:
        return "unset"
    if value == "":
        return "empty"
    return f"`{str(value).replace(str(Path.home()), '~')}`"


def _row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
    if isinstance(action, SettingFlag):
        field = action.field
        env = f"`{action.env}`"
        default = _value(field.default_factory() if field.default_factory else field.default)  # type: ignore[call-arg]
        meaning = field.description or ""
        if action.repeated:
            meaning += " Repeat the flag for more."
    else:
        env, default, meaning = "", _value(action.default), action.help or ""
    if action.choices is not None:
        meaning += " One of: " + ", ".join(f"`{choice}`" for choice in action.choices) + "."
    return f"| {flags} | {env} | {default} | {meaning.replace('|', '/')} |"


def _table(parser: argparse.ArgumentParser, skip: set[str]) -> list[str]:
    rows = ["| Flag | Env var | Default | Meaning |", "|---|---|---|---|"]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        if not skip.intersection(action.option_strings):
            rows.append(_row(action))
    return rows


def render_reference() -> str:
    parsers = _parsers()
    gateway_flags = {
        flag for action in parsers["gateway"]._actions for flag in action.option_strings
    }
    lines = ["# Configuration reference", "", INTRO]
    for command, about in SECTIONS:
        skip = gateway_flags if command == "up" else set()
        lines += ["", f"## `spiritlm-serve {command}`", "", about, ""]
        lines += _table(parsers[command], skip)
    lines += ["", "## Checkpoint flags of the other commands", "", CHECKPOINT_COMMANDS, ""]
    lines += _table(parsers["checkpoints"], set())
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
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
