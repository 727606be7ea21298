"""Pieces shared by several sub-commands."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from service.checkpoints.layout import CheckpointLayout
from service.config import Settings, add_settings_arguments, resolve_device, settings_from_args
from service.errors import SpiritError


def log(message: str) -> None:
    """Progress goes to stderr so that stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """The settings of the commands that load checkpoints themselves."""
    add_settings_arguments(parser, Settings, ("model", "checkpoints_dir", "cache_dir", "device"))


def checked_device(name: str) -> str:
    """The resolved device name, or SpiritError when torch cannot use it here."""
    import torch

    device = resolve_device(name)
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise SpiritError(f"--device {name}: not a torch device ({error})") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SpiritError(f"--device {name}: CUDA is not available on this machine")
    return device


def layout_from_args(
    args: argparse.Namespace, *, lm: bool, speech: bool
) -> tuple[Settings, CheckpointLayout]:
    """Settings and the checkpoint layout, with the needed files checked up front."""
    from service.checkpoints.make import check_files, resolve_layout

    settings: Settings = settings_from_args(args)
    layout = resolve_layout(settings.checkpoints_dir, settings.cache_dir, progress=log)
    check_files(layout, settings.model, lm=lm, speech=speech)
    return settings, layout


def pin_to_configured_cores(settings: Settings) -> bool:
    """Apply `cpu_cores` before the models load; False (after saying why) when it is invalid."""
    from service.cpus import core_list, pin_process

    try:
        cores = pin_process(settings.cpu_cores)
    except ValueError as error:
        log(f"error: {error}")
        return False
    if cores is not None:
        log(f"running on CPU core(s) {core_list(cores)}")
    return True


def register_in_process_bench(
    commands: argparse._SubParsersAction, name: str, help_text: str, module: str
) -> None:
    """`bench <name>` for a benchmark that runs in this process, without servers: `module`
    (imported when used, it needs torch) has `add_arguments(parser)` and
    `run(args, progress, command)`; a ValueError of its arguments is a clean CLI error."""

    def run(args: argparse.Namespace) -> int:
        command = "spiritlm-serve " + shlex.join(sys.argv[1:])
        # The speech worker's kernel cache, so that the models run here as fast as there.
        from service.speech.kernel_cache import keep_kernels

        keep_kernels()
        try:
            importlib.import_module(module).run(args, log, command)
        except ValueError as error:
            raise SpiritError(str(error)) from None
        return 0

    parser = commands.add_parser(name, help=help_text)
    importlib.import_module(module).add_arguments(parser)
    parser.set_defaults(handler=run)
