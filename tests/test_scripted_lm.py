"""The scripted LM of tests/support/scripted_lm.py decodes greedily along its successor map.

Checked with transformers' LlamaForCausalLM (no vLLM): the chain is followed exactly whatever
precedes the last prompt token, a logits mask that keeps the successor still picks it, and the
files besides the weights are the source's.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from service.checkpoints.layout import BASE, CheckpointLayout
from service.lm.tokenizer import SpiritTokenizer
from tests.support.scripted_lm import WINNING_LOGIT, write_scripted_lm

NEWLINE_PIECE = "<0x0A>"
HUBERT_VALUES = [3, 9, 41, 7, 100, 250, 499, 12, 0, 77] + list(range(300, 320))
FALLBACK_VALUE = 1


@pytest.fixture(scope="module")
def tokenizer(layout: CheckpointLayout) -> SpiritTokenizer:
    return SpiritTokenizer.from_dir(layout.lm_dir(BASE))


@pytest.fixture(scope="module")
def chain(tokenizer: SpiritTokenizer) -> list[int]:
    """[Speech] -> 30 distinct [HuN] -> newline -> </s>."""
    newline = next(i for i in tokenizer.text_ids if tokenizer.token_string(i) == NEWLINE_PIECE)
    hubert = [tokenizer.unit_id("hubert", value) for value in HUBERT_VALUES]
    return [tokenizer.speech_marker_id, *hubert, newline, tokenizer.eos_id]


@pytest.fixture(scope="module")
def scripted(
    layout: CheckpointLayout,
    tokenizer: SpiritTokenizer,
    chain: list[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, torch.nn.Module]:
    from transformers import LlamaForCausalLM

    successors = dict(zip(chain, chain[1:], strict=False))
    fallback = tokenizer.unit_id("hubert", FALLBACK_VALUE)
    target = tmp_path_factory.mktemp("scripted") / BASE
    written = write_scripted_lm(layout.lm_dir(BASE), target, successors, fallback=fallback)
    assert written == target
    model = LlamaForCausalLM.from_pretrained(target, dtype=torch.float32)
    model.eval()
    return target, model


def last_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0, -1]


def greedy(model: torch.nn.Module, ids: list[int], steps: int) -> list[int]:
    out = list(ids)
    for _ in range(steps):
        out.append(int(last_logits(model, out).argmax()))
    return out[len(ids) :]


def test_files_match_the_source(layout: CheckpointLayout, scripted) -> None:
    target, _ = scripted
    source = layout.lm_dir(BASE)
    names = sorted(p.name for p in source.iterdir())
    assert sorted(p.name for p in target.iterdir()) == names
    for name in names:
        if name != "pytorch_model.bin":
            assert (target / name).read_bytes() == (source / name).read_bytes(), name
    ours = torch.load(target / "pytorch_model.bin", weights_only=True)
    theirs = torch.load(source / "pytorch_model.bin", weights_only=True, mmap=True)
    assert list(ours) == list(theirs)
    for name, tensor in ours.items():
        assert tensor.shape == theirs[name].shape and tensor.dtype == torch.float32, name
        assert torch.isfinite(tensor).all(), name


def test_greedy_follows_the_chain_whatever_precedes(
    tokenizer: SpiritTokenizer, chain: list[int], scripted
) -> None:
    _, model = scripted
    rng = random.Random(0)
    prefixes = [
        tokenizer.encode("[Text]Once upon a time"),
        tokenizer.encode("[Speech][Hu3][Hu5][Hu3][Hu9][Text] hello[Speech][Hu41]"),
        [tokenizer.bos_id],
        [tokenizer.bos_id] + [rng.randrange(tokenizer.num_tokens) for _ in range(40)],
    ]
    for prefix in prefixes:
        for start in (0, 7, len(chain) - 3):
            prompt = prefix + chain[: start + 1]
            assert greedy(model, prompt, len(chain) - start - 1) == chain[start + 1 :]


def test_unscripted_last_token_gives_the_fallback(tokenizer: SpiritTokenizer, scripted) -> None:
    _, model = scripted
    fallback = tokenizer.unit_id("hubert", FALLBACK_VALUE)
    for prompt in ("[Text]Once upon a time", "[Speech][Hu3][Hu5]", "[Text]a[Speech][Hu9][Hu2]"):
        assert greedy(model, tokenizer.encode(prompt), 3) == [fallback] * 3


def test_margin_and_masking(tokenizer: SpiritTokenizer, chain: list[int], scripted) -> None:
    _, model = scripted
    speech_allowed = torch.tensor(tokenizer.allowed_ids("speech", expressive=False))
    rng = random.Random(1)
    for position, token in enumerate(chain[:-1]):
        successor = chain[position + 1]
        logits = last_logits(model, tokenizer.encode("[Text]so") + [token])
        others = torch.cat([logits[:successor], logits[successor + 1 :]])
        assert logits[successor] == pytest.approx(WINNING_LOGIT, abs=0.1)
        assert logits[successor] - others.max() >= 20
        # Masks as vLLM's allowed_token_ids applies them: the successor wins among the allowed.
        subset = rng.sample(range(tokenizer.vocab_size), 50) + [successor]
        masks = [torch.tensor(subset)]
        if successor in set(speech_allowed.tolist()):
            masks.append(speech_allowed)
        for allowed in masks:
            masked = torch.full_like(logits, float("-inf"))
            masked[allowed] = logits[allowed]
            assert int(masked.argmax()) == successor


def test_too_many_keys_and_bad_ids(layout: CheckpointLayout, tmp_path: Path) -> None:
    source = layout.lm_dir(BASE)
    with pytest.raises(ValueError, match="at most 127"):
        write_scripted_lm(source, tmp_path / "a", {i: i + 1 for i in range(128)}, fallback=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        write_scripted_lm(source, tmp_path / "b", {5: 40000}, fallback=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
