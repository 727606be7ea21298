"""HuBERT features -> phonetic units: LinearQuantizer or k-means.

The formats are described in docs/format.md#phonetic-quantizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.errors import CheckpointError
from service.speech.torch_files import (
    check_state_dict,
    load_torch_file,
    numpy_array_globals,
    require_mapping,
    require_state_dict,
)

MAX_BLANK_ITERATIONS = 10_000


def replace_blanks(
    codes: torch.Tensor, blank: int, max_iterations: int = MAX_BLANK_ITERATIONS
) -> torch.Tensor:
    """Every blank takes the value one position to the left in a circular shift, repeatedly.

    This is the reference loop: leading blanks wrap around to the end of the sequence, and an
    all-blank sequence stays blank (after max_iterations in the reference; it is a fixed point,
    so stopping early gives the same result).
    """
    flat = codes.flatten()
    for _ in range(max_iterations):
        is_blank = flat == blank
        if not bool(is_blank.any()) or bool(is_blank.all()):
            break
        flat = torch.where(is_blank, torch.roll(flat, 1), flat)
    return flat.reshape(codes.shape)


class Quantizer:
    """Maps features [frames, dim] to unit ids [frames] (int64, on the loader's device)."""

    dim: int
    vocab_size: int
    device: torch.device

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"quantizer expects features [frames, {self.dim}], got {list(features.shape)}"
            )
        with torch.inference_mode():
            return self._assign(features.to(self.device, torch.float32))

    def _assign(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def linear_quantizer_sizes(vocab_size: int, dim: int, upstream_dim: int) -> tuple[int, int, int]:
    """(hidden1, hidden2, outputs) of the 3-layer MLP; Python floor division on purpose."""
    outputs = vocab_size + 1
    margin = upstream_dim - outputs
    return dim - margin // 4, dim - margin // 2, outputs


class LinearQuantizer(Quantizer):
    """MLP with an extra CTC-style blank output (index vocab_size) and blank post-processing."""

    def __init__(self, mlp: nn.Sequential, vocab_size: int, dim: int, device: torch.device):
        self._mlp = mlp
        self.vocab_size = vocab_size
        self.dim = dim
        self.device = device

    def _assign(self, features: torch.Tensor) -> torch.Tensor:
        # log-softmax as in the reference: it can merge near-equal logits into exact ties.
        scores = torch.log_softmax(self._mlp(features), dim=-1)
        return replace_blanks(scores.argmax(dim=-1), blank=self.vocab_size)


class KMeansQuantizer(Quantizer):
    """Nearest cluster centre by ||x||^2 - 2 x.c + ||c||^2."""

    def __init__(self, centers: torch.Tensor, device: torch.device) -> None:
        self._centers_t = centers.t().contiguous().to(device)
        self._center_norms = self._centers_t.pow(2).sum(0, keepdim=True)
        self.vocab_size, self.dim = centers.shape
        self.device = device

    def _assign(self, features: torch.Tensor) -> torch.Tensor:
        distances = (
            features.pow(2).sum(1, keepdim=True)
            - 2 * features @ self._centers_t
            + self._center_norms
        )
        return distances.argmin(dim=1)


def _positive_int(path: Path, cfg: dict, name: str) -> int:
    value = cfg.get(name)
    if type(value) is not int or value <= 0:
        raise CheckpointError(path, f"model_cfg.{name} must be a positive integer, found {value!r}")
    return value


def _load_linear(path: Path, content: dict, device: torch.device) -> LinearQuantizer:
    for key in ("model_cfg", "model_weight"):
        if key not in content:
            raise CheckpointError(path, f"missing top-level key {key!r}")
    cfg = dict(require_mapping(path, content["model_cfg"], "model_cfg"))
    vocab = _positive_int(path, cfg, "vocab_size")
    dim = _positive_int(path, cfg, "dim")
    upstream = _positive_int(path, cfg, "upstream_dim")
    hidden1, hidden2, outputs = linear_quantizer_sizes(vocab, dim, upstream)
    if hidden1 <= 0 or hidden2 <= 0:
        raise CheckpointError(path, f"model_cfg gives non-positive MLP sizes {hidden1}, {hidden2}")
    mlp = nn.Sequential(
        nn.Linear(dim, hidden1),
        nn.LeakyReLU(0.01),
        nn.Linear(hidden1, hidden2),
        nn.LeakyReLU(0.01),
        nn.Linear(hidden2, outputs),
    )
    weights = require_state_dict(path, content["model_weight"], "model_weight")
    expected = {name: tuple(p.shape) for name, p in mlp.state_dict().items()}
    check_state_dict(path, weights, expected, what="model_weight")
    mlp.load_state_dict({name: value.float() for name, value in weights.items()}, strict=True)
    mlp.to(device).eval()
    return LinearQuantizer(mlp, vocab, dim, device)


def _load_kmeans(path: Path, content: dict, device: torch.device) -> KMeansQuantizer:
    raw = content["cluster_centers"]
    if isinstance(raw, np.ndarray):
        raw = torch.from_numpy(raw)
    if not isinstance(raw, torch.Tensor) or raw.dim() != 2 or not raw.is_floating_point():
        raise CheckpointError(path, "cluster_centers must be a 2-D float array")
    count = content.get("n_clusters")
    if type(count) is not int or count != raw.shape[0]:
        raise CheckpointError(
            path, f"n_clusters {count!r} does not match cluster_centers rows {raw.shape[0]}"
        )
    return KMeansQuantizer(raw.float(), device)


def load_quantizer(path: Path, device: torch.device | str = "cpu") -> Quantizer:
    """Load L11_quantizer_500.pt (LinearQuantizer) or a k-means file (cluster_centers)."""
    path = Path(path)
    content = load_torch_file(path, safe_globals=numpy_array_globals())
    content = dict(require_mapping(path, content, "file content"))
    target = torch.device(device)
    if "cluster_centers" in content:
        return _load_kmeans(path, content, target)
    return _load_linear(path, content, target)
