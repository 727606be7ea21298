"""Importing torchfcpe without torchaudio.

torchfcpe 0.0.4 imports torchaudio.transforms.Resample at module level but only uses it to
resample input that is not 16 kHz; we always feed 16 kHz. torchaudio is absent (or broken) on the
CPU machines, so while torchfcpe is imported a stand-in module provides a Resample that fails
loudly if it is ever constructed. The stand-in is removed from sys.modules right after the
import so no other library mistakes it for the real package.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import sys
import types
from collections.abc import Iterator
from typing import Any

import torch

STAND_IN_NAMES = ("torchaudio", "torchaudio.transforms")


class MissingResample:
    """Stand-in for torchaudio.transforms.Resample."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "torchfcpe tried to resample audio, which needs torchaudio (not installed); "
            "the pitch tokenizer must be fed 16 kHz audio"
        )


def _torchaudio_usable() -> bool:
    if "torchaudio.transforms" in sys.modules:
        return True
    if importlib.util.find_spec("torchaudio") is None:
        return False
    try:
        importlib.import_module("torchaudio.transforms")
        return True
    except Exception:  # an installed but broken build fails in many ways
        for name in [name for name in sys.modules if name.split(".")[0] == "torchaudio"]:
            del sys.modules[name]
        return False


@contextlib.contextmanager
def _stand_in_torchaudio() -> Iterator[None]:
    package = types.ModuleType("torchaudio")
    transforms = types.ModuleType("torchaudio.transforms")
    transforms.Resample = MissingResample  # type: ignore[attr-defined]
    package.transforms = transforms  # type: ignore[attr-defined]
    sys.modules["torchaudio"] = package
    sys.modules["torchaudio.transforms"] = transforms
    try:
        yield
    finally:
        for name in STAND_IN_NAMES:
            sys.modules.pop(name, None)


def import_torchfcpe() -> types.ModuleType:
    """The torchfcpe package, imported with a torchaudio stand-in when needed."""
    if "torchfcpe" in sys.modules:
        return sys.modules["torchfcpe"]
    if importlib.util.find_spec("torchfcpe") is None:
        raise RuntimeError(
            "the pitch tokenizer needs the torchfcpe package (pip install torchfcpe==0.0.4)"
        )
    # torchfcpe prints notices (e.g. librosa not found) on import and load; keep stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        if _torchaudio_usable():
            return importlib.import_module("torchfcpe")
        with _stand_in_torchaudio():
            return importlib.import_module("torchfcpe")


def spawn_fcpe(device: torch.device) -> torch.nn.Module:
    """torchfcpe's bundled F0 model (asset fcpe_c_v001.pt) on the given device, eval mode."""
    torchfcpe = import_torchfcpe()
    with contextlib.redirect_stdout(io.StringIO()):
        model = torchfcpe.spawn_bundled_infer_model(device=str(device))
    return model.eval()
