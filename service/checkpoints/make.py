"""Writing complete checkpoint directories, and the embedded default kept in a cache directory."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from service.checkpoints.layout import VARIANTS, CheckpointLayout
from service.errors import CheckpointError

Progress = Callable[[str], None]

# Bump whenever the generated files change, so caches written by older versions are not reused.
EMBEDDED_VERSION = "1"
EMBEDDED_SEED = 0


def make_checkpoints(
    root: Path, *, seed: int = 0, size: str = "tiny", progress: Progress = print
) -> CheckpointLayout:
    """Write both variants' speech tokenizer and LM files in the official layout under `root`."""
    from service.checkpoints.tiny_encoders import write_encoders
    from service.checkpoints.tiny_lm import write_lms
    from service.checkpoints.tiny_vocoder import write_vocoders

    layout = CheckpointLayout(Path(root))
    progress(f"[1/3] speech encoders ({size}) -> {layout.speech_dir}")
    write_encoders(layout, seed=seed, size=size, progress=progress)
    progress(f"[2/3] vocoders ({size}) -> {layout.speech_dir}")
    write_vocoders(layout, seed=seed, size=size, progress=progress)
    progress(f"[3/3] language models -> {layout.root / 'spiritlm_model'}")
    write_lms(layout, seed=seed, progress=progress)
    progress(f"checkpoints written to {layout.root}")
    return layout


def embedded_checkpoints(cache_dir: Path, *, progress: Progress = print) -> CheckpointLayout:
    """The embedded default checkpoints, generated on first use.

    Several processes may start at once (LM worker, speech worker): a file lock serialises the
    generation and the directory appears atomically, complete or not at all.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / f"tiny-checkpoints-v{EMBEDDED_VERSION}"
    if _is_complete(target):
        return CheckpointLayout(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_complete(target):
            progress(f"generating the embedded default checkpoints in {target} (once)")
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))
            try:
                make_checkpoints(staging, seed=EMBEDDED_SEED, progress=progress)
                (staging / ".complete").write_text(EMBEDDED_VERSION)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return CheckpointLayout(target)


def _is_complete(root: Path) -> bool:
    return (root / ".complete").is_file()


def is_embedded(layout: CheckpointLayout) -> bool:
    """Whether `layout` is a generated embedded default (it carries the completion marker)."""
    return _is_complete(layout.root)


def resolve_layout(
    checkpoints_dir: Path | None, cache_dir: Path, *, progress: Progress = print
) -> CheckpointLayout:
    """The configured checkpoint root, or the embedded default when none is configured."""
    if checkpoints_dir is None:
        return embedded_checkpoints(cache_dir, progress=progress)
    root = Path(checkpoints_dir).expanduser()
    if not root.is_dir():
        raise CheckpointError(root, "checkpoint directory does not exist")
    return CheckpointLayout(root.resolve())


def check_files(layout: CheckpointLayout, variant: str, *, lm: bool, speech: bool) -> None:
    """Fail early, naming every missing file, before any model is loaded."""
    wanted = layout.speech_files(variant) if speech else []
    missing = [str(path) for path in wanted if not path.is_file()]
    if lm:
        missing += [str(path) for path in layout.missing_lm_files(variant)]
    if missing:
        raise CheckpointError(
            layout.root, f"missing checkpoint files for {variant}: " + ", ".join(missing)
        )


__all__ = ["VARIANTS", "check_files", "embedded_checkpoints", "make_checkpoints", "resolve_layout"]
