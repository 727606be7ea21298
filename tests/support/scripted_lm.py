"""A Llama LM checkpoint whose greedy decoding is scripted by a successor map.

Tests that serve the LM with the real vLLM need to know exactly which tokens greedy decoding
produces after a prompt, for instance to check where a generation stops: after "[Speech]" the
model must say [Hu3], then [Hu9], ..., then a newline. The random weights of the embedded tiny
LM give no such guarantee. `write_scripted_lm` turns a copy of a conforming LM directory (same
tokenizer and config files, same parameter names and shapes) into a bigram machine whose next
token depends only on the last token:

* every layer adds nothing to the residual stream (all projection matrices are zero, so the
  attention and MLP outputs are exactly zero), hence the final hidden state is the embedding of
  the last token, whatever came before it;
* embeddings are basis vectors: each key of `successors` gets its own direction, every other id
  (padding rows included) shares one fallback direction;
* after the final RMSNorm (weight 1) a basis vector e_k becomes sqrt(H) * e_k, and row j of
  `lm_head` is the sum of the directions whose successor is j, scaled so that the successor's
  logit is `WINNING_LOGIT` and every other logit is exactly 0.

So greedy decoding follows the map, also under a logits mask (vLLM's `allowed_token_ids`) as
long as the successor is allowed; if it is not, all allowed logits tie at 0.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

WEIGHT_FILE = "pytorch_model.bin"
# Weight files of every format vLLM and transformers load; none of them is copied.
_WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth")
_WEIGHT_INDEXES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")

# Logit of the scripted successor; every other logit is 0.
WINNING_LOGIT = 50.0


def write_scripted_lm(
    source_lm_dir: Path,
    target_lm_dir: Path,
    successors: Mapping[int, int],
    *,
    fallback: int,
) -> Path:
    """Write an LM directory at `target_lm_dir` whose greedy next token is `successors[last]`.

    `source_lm_dir` is a conforming Llama LM directory (the embedded tiny LM is): its non-weight
    files are copied unchanged and a float32 `pytorch_model.bin` with its parameter names and
    shapes is written. A last token that is not a key of `successors` is followed by `fallback`.
    At most hidden_size - 1 keys (127 for the tiny LM). Returns `target_lm_dir`.
    """
    source = Path(source_lm_dir)
    target = Path(target_lm_dir)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    shapes = _parameter_shapes(config)
    vocab, hidden = shapes["model.embed_tokens.weight"]
    _check_ids(successors, fallback, vocab, hidden)
    _check_source_weights(source, shapes)
    if target.resolve() == source.resolve():
        raise ValueError("target_lm_dir must differ from source_lm_dir")

    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if _is_weight_file(path.name):
            continue
        if path.is_dir():
            shutil.copytree(path, target / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, target / path.name)
    torch.save(_state_dict(shapes, successors, fallback), target / WEIGHT_FILE)
    return target


def _parameter_shapes(config: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """LlamaForCausalLM's parameters (Hugging Face names) for a config, in a fixed order."""
    if config.get("model_type") != "llama":
        raise ValueError(f"not a Llama config: model_type {config.get('model_type')!r}")
    if config.get("tie_word_embeddings", False):
        raise ValueError("tie_word_embeddings is true: lm_head must be separate from embeddings")
    if config.get("attention_bias", False) or config.get("mlp_bias", False):
        raise ValueError("biased Llama layers are not supported")
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for layer in range(int(config["num_hidden_layers"])):
        prefix = f"model.layers.{layer}"
        shapes[f"{prefix}.self_attn.q_proj.weight"] = (heads * head_dim, hidden)
        shapes[f"{prefix}.self_attn.k_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[f"{prefix}.self_attn.v_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[f"{prefix}.self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        shapes[f"{prefix}.mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"{prefix}.mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{prefix}.mlp.down_proj.weight"] = (hidden, inter)
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def _check_ids(successors: Mapping[int, int], fallback: int, vocab: int, hidden: int) -> None:
    if len(successors) > hidden - 1:
        raise ValueError(
            f"{len(successors)} keys in the successor map, at most {hidden - 1} fit: each key "
            f"needs its own direction of the {hidden}-dimensional hidden state and one is kept "
            "for the fallback"
        )
    for token in [*successors, *successors.values(), fallback]:
        if not 0 <= int(token) < vocab:
            raise ValueError(f"token id {token} is outside the vocabulary of {vocab}")


def _check_source_weights(source: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """When the source has a pytorch_model.bin, its names and shapes must match the config's."""
    path = source / WEIGHT_FILE
    if not path.is_file():
        return
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    if found != dict(shapes):
        raise ValueError(f"{path}: parameters differ from what config.json describes")


def _is_weight_file(name: str) -> bool:
    return name.endswith(_WEIGHT_SUFFIXES) or name in _WEIGHT_INDEXES


def _state_dict(
    shapes: Mapping[str, tuple[int, ...]], successors: Mapping[int, int], fallback: int
) -> dict[str, torch.Tensor]:
    vocab, hidden = shapes["model.embed_tokens.weight"]
    keys = sorted({int(key) for key in successors})
    direction_of = {key: index for index, key in enumerate(keys)}
    fallback_direction = len(keys)
    next_of_direction = [int(successors[key]) for key in keys] + [int(fallback)]

    embed = torch.zeros(vocab, hidden, dtype=torch.float32)
    embed[:, fallback_direction] = 1.0
    for key, direction in direction_of.items():
        embed[key, fallback_direction] = 0.0
        embed[key, direction] = 1.0

    # The final RMSNorm maps e_k to sqrt(hidden / (1 + eps * hidden)) * e_k, just under sqrt(H).
    scale = WINNING_LOGIT / math.sqrt(hidden)
    lm_head = torch.zeros(vocab, hidden, dtype=torch.float32)
    for direction, token in enumerate(next_of_direction):
        lm_head[token, direction] = scale

    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name == "model.embed_tokens.weight":
            state[name] = embed
        elif name == "lm_head.weight":
            state[name] = lm_head
        elif len(shape) == 1:
            state[name] = torch.ones(shape, dtype=torch.float32)  # RMSNorm scales
        else:
            state[name] = torch.zeros(shape, dtype=torch.float32)
    return state


__all__ = ["WINNING_LOGIT", "write_scripted_lm"]
