"""Reading checkpoint files written with torch.save, turning every failure into CheckpointError."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.errors import CheckpointError


def numpy_array_globals() -> list[Any]:
    """Globals a pickled numpy array needs; allow-listing them keeps a weights-only load."""
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else None
    if reconstruct is None:  # numpy < 2
        reconstruct = np.core.multiarray._reconstruct
    dtypes = [type(np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64")]
    return [reconstruct, np.ndarray, np.dtype, *dtypes]


def _short_reason(error: Exception) -> str:
    text = str(error)
    # torch's weights-only refusal is a long essay; the useful part is the WeightsUnpickler line.
    for line in text.splitlines():
        if "WeightsUnpickler error" in line:
            return line.strip()
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first}"[:300]


def load_torch_file(
    path: Path, *, safe_globals: Sequence[Any] = (), allow_pickle: bool = False
) -> Any:
    """torch.load onto the CPU, weights-only first.

    With allow_pickle, a file that the weights-only loader refuses is unpickled in full: some
    official files pickle other objects next to the weights. Only use it for trusted files.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_error:  # torch raises many types for unreadable files
        if not allow_pickle:
            raise CheckpointError(
                path, f"cannot be read as a weights-only PyTorch file ({_short_reason(safe_error)})"
            ) from safe_error
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise CheckpointError(
                path, f"cannot be read as a PyTorch file ({_short_reason(error)})"
            ) from error


def require_mapping(path: Path, value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CheckpointError(path, f"{what} must be a dict, found {type(value).__name__}")
    return value


def require_state_dict(path: Path, value: Any, what: str) -> dict[str, torch.Tensor]:
    """A mapping of parameter name to tensor, or CheckpointError naming the offending entry."""
    mapping = require_mapping(path, value, what)
    for key, tensor in mapping.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(path, f"{what} entry {key!r} is not a tensor")
    return dict(mapping)


def check_state_dict(
    path: Path,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    optional: Mapping[str, tuple[int, ...]] | None = None,
    what: str = "state dict",
) -> None:
    """Every expected key present with its shape; optional keys may be absent; nothing else."""
    optional = optional or {}
    missing = sorted(key for key in expected if key not in state)
    unexpected = sorted(key for key in state if key not in expected and key not in optional)
    problems = []
    if missing:
        problems.append(f"missing keys {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_key_list(unexpected)}")
    for key, tensor in state.items():
        shape = expected.get(key, optional.get(key))
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            problems.append(f"key {key} has shape {list(tensor.shape)}, expected {list(shape)}")
    if problems:
        raise CheckpointError(path, f"{what} does not match the model: " + "; ".join(problems))


def _key_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The plain weight of a module stored with ``torch.nn.utils.weight_norm(module, dim=dim)``.

    w = g * v / ||v||, the norm taken over every axis of ``v`` except ``dim``: one norm per output
    channel for dim 0 (the HiFi-GAN convs), one per kernel tap for dim 2 (HuBERT's positional
    conv).
    """
    axes = tuple(axis for axis in range(weight_v.dim()) if axis != dim % weight_v.dim())
    norm = torch.linalg.vector_norm(weight_v, dim=axes, keepdim=True)
    return weight_v * (weight_g / norm)
