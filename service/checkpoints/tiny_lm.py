"""Tiny, deterministic Spirit LM language-model directories in the official format.

The format: docs/format.md#checkpoint-layout, docs/format.md#language-model and
docs/format.md#token-vocabulary.

Both variants get the six official files. The tokenizer is a Llama-2-like SentencePiece BPE model
built in code: identity normalizer, dummy prefix, byte fallback, `<unk>`/`<s>`/`</s>` at 0-2, the
256 byte pieces at 3-258 and ordinary pieces up to exactly 32000 text pieces. The speech tokens sit
at their official ids (docs/format.md#token-vocabulary) in the two forms a conforming checkpoint
may use:

* base: USER_DEFINED pieces inside `tokenizer.model` (32503 pieces);
* expressive: a 32000-piece `tokenizer.model` plus added tokens in `tokenizer_config.json`
  (`added_tokens_decoder`, not special, not normalized).

The ordinary pieces come from a small BPE merge learner run over a built-in English corpus, so
English text splits into whole-word and sub-word pieces, then deterministic fillers (each the
concatenation of two earlier pieces, so sentencepiece can reach it by merging) up to the count.
The LM weights are random normal draws from a seeded `torch.Generator`: the same seed gives
byte-identical files.
"""

from __future__ import annotations

import heapq
import json
import re
import string
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from service.checkpoints.layout import BASE, EXPRESSIVE, VARIANTS, CheckpointLayout

Progress = Callable[[str], None]

SPACE = "\u2581"  # sentencepiece's whitespace symbol
TEXT_PIECES = 32000
SPECIAL_PIECES = ("<unk>", "<s>", "</s>")
BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(256))

# Geometry of the tiny model. head_dim 64 because vLLM's CPU attention rejects smaller heads.
HIDDEN = 128
HEADS = 2
LAYERS = 2
INTERMEDIATE = 256
MAX_POSITIONS = 4096
VOCAB_SIZE = {BASE: 32512, EXPRESSIVE: 32768}
INIT_STD = 0.02

# Longest filler piece: long enough for real words, short enough to stay plausible.
MAX_FILLER_CHARS = 16

_CORPUS = """
The largest country in the world is Russia, and the smallest one is the Vatican City. People who
live in large cities often say that the streets are never quiet, while people who live in the
country say that they can hear the birds singing in the morning. A good conversation can change
the way we think about the world around us. When you speak, your voice carries more than the words
themselves: it carries the pitch, the rhythm and the feeling of what you want to say.

This is a small language model that was written for testing. It has never read a book, and it has
never listened to a story, so everything it says will sound strange. That is fine, because the
purpose of this model is to check that the serving system works from the first byte to the last.
The model reads text and speech tokens, and it writes text and speech tokens in return.

Speech is made of sounds that change over time. A speech encoder turns a recording into a sequence
of units, about twenty five of them every second. Another encoder follows the pitch of the voice,
and a third one describes the speaking style, such as a happy, sad, calm or excited tone. A vocoder
does the opposite work: it turns the units back into a waveform that we can play and hear.

Yesterday the weather was cold and windy, but today the sun is shining and the sky is clear. The
children are playing in the park near the river, and their parents are sitting on the benches
under the old trees. Some of them are reading, some are talking on the phone, and a few are simply
watching the water move slowly towards the sea. In the evening the light will turn orange and red.

Every morning she opens the window, makes a cup of tea and writes down three things she would like
to learn. Last week it was the names of the stars, the history of the printing press and the best
way to bake bread. This week she wants to understand how computers recognise spoken language, why
some languages have more vowels than others, and how musicians remember long pieces of music.

The train to the mountains leaves at seven o'clock from the central station. If you arrive early,
you can buy a coffee and a sandwich before the journey. The trip takes about four hours, and the
views from the windows are beautiful in every season: green fields in spring, golden hills in
summer, red and brown forests in autumn, and white peaks covered with snow in winter.

Numbers are important too. One, two, three, four, five, six, seven, eight, nine and ten are the
first words that many children learn to count with. Later they learn that a hundred is ten times
ten, that a thousand is ten times a hundred, and that there are sixty minutes in an hour and
twenty four hours in a day. Time, distance and weight can all be measured with numbers.

What would you like to do next? You could ask a question, tell a story, sing a song or describe a
picture. The system will listen, think for a moment and answer in its own voice. Sometimes the
answer will be written, sometimes it will be spoken, and sometimes it will be both at once. Thank
you for reading this far, and good luck with your experiments.

Because language changes, dictionaries change as well. New words appear when people invent new
tools, new games or new kinds of food, and old words slowly disappear when nobody needs them any
more. Teachers, writers, actors and students all shape the language they share, often without
noticing it. Listening carefully to each other is therefore one of the most useful skills there is.
"""

# Single characters that get their own piece (newline, tab and emoji are left to byte fallback).
_CHAR_RANGES = (
    (0x21, 0x7E),  # printable ASCII
    (0xA1, 0xFF),  # Latin-1 letters and signs
    (0x391, 0x3A9),  # Greek capitals
    (0x3B1, 0x3C9),  # Greek small letters
    (0x410, 0x44F),  # basic Cyrillic
    (0x4E00, 0x4E3F),  # a few CJK ideographs
)
_EXTRA_CHARS = SPACE + "\u2013\u2014\u2018\u2019\u201c\u201d\u2026"
_WHITESPACE_RUNS = tuple(SPACE * n for n in range(2, 9))

# Units the merge learner works within: a letter run with its leading space, a digit, or one
# other character. Pieces therefore never mix letters with digits or punctuation.
_UNIT = re.compile(rf"{SPACE}?[A-Za-z]+|{SPACE}?[0-9]|{SPACE}?[^\sA-Za-z0-9]")


def speech_token_strings(variant: str) -> list[str]:
    """The speech-related tokens of a variant, in id order starting at 32000.

    The ids are listed in docs/format.md#token-vocabulary.
    """
    tokens = ["[Text]", "[Speech]"] + [f"[Hu{n}]" for n in range(501)]
    if variant == EXPRESSIVE:
        tokens += [f"[Pi{n}]" for n in range(64)] + [f"[St{n}]" for n in range(100)]
    return tokens


def write_lms(layout: CheckpointLayout, *, seed: int = 0, progress: Progress = print) -> None:
    """Write both variants' LM directories (the six official files each) under `layout`."""
    for index, variant in enumerate(VARIANTS):
        write_lm(
            layout.lm_dir(variant), variant, seed=seed * len(VARIANTS) + index, progress=progress
        )


def write_lm(lm_dir: Path, variant: str, *, seed: int, progress: Progress = print) -> None:
    lm_dir = Path(lm_dir)
    lm_dir.mkdir(parents=True, exist_ok=True)
    progress(f"  {variant}: tokenizer")
    speech = speech_token_strings(variant)
    in_model = speech if variant == BASE else []
    (lm_dir / "tokenizer.model").write_bytes(sentencepiece_model(in_model))
    added = [] if variant == BASE else speech
    _write_json(lm_dir / "tokenizer_config.json", tokenizer_config(added))
    _write_json(lm_dir / "special_tokens_map.json", special_tokens_map())
    vocab_size = VOCAB_SIZE[variant]
    _write_json(lm_dir / "config.json", model_config(vocab_size))
    _write_json(lm_dir / "generation_config.json", generation_config())
    progress(f"  {variant}: random weights (seed {seed}, vocab {vocab_size})")
    torch.save(random_state_dict(vocab_size, seed), lm_dir / "pytorch_model.bin")


# ---------------------------------------------------------------------------------------------
# tokenizer.model


def sentencepiece_model(user_defined: list[str]) -> bytes:
    """A serialized Llama-2-like BPE ModelProto; `user_defined` pieces follow the text pieces."""
    proto = sp_pb2.ModelProto()
    piece_type = sp_pb2.ModelProto.SentencePiece.Type
    kinds = (piece_type.UNKNOWN, piece_type.CONTROL, piece_type.CONTROL)
    for piece, kind in zip(SPECIAL_PIECES, kinds, strict=True):
        proto.pieces.add(piece=piece, score=0.0, type=kind)
    for piece in BYTE_PIECES:
        proto.pieces.add(piece=piece, score=0.0, type=piece_type.BYTE)
    for piece, score in text_pieces():
        proto.pieces.add(piece=piece, score=score, type=piece_type.NORMAL)
    for piece in user_defined:
        proto.pieces.add(piece=piece, score=0.0, type=piece_type.USER_DEFINED)
    _fill_trainer_spec(proto.trainer_spec, len(proto.pieces))
    _fill_normalizer_spec(proto.normalizer_spec)
    return proto.SerializeToString()


def _fill_trainer_spec(spec: sp_pb2.TrainerSpec, vocab_size: int) -> None:
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = vocab_size
    spec.byte_fallback = True
    spec.split_digits = True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    spec.unk_piece, spec.bos_piece, spec.eos_piece = SPECIAL_PIECES
    spec.character_coverage = 0.99995
    spec.max_sentencepiece_length = MAX_FILLER_CHARS


def _fill_normalizer_spec(spec: sp_pb2.NormalizerSpec) -> None:
    spec.name = "identity"
    spec.precompiled_charsmap = b""
    spec.add_dummy_prefix = True
    spec.remove_extra_whitespaces = False
    spec.escape_whitespaces = True


@lru_cache(maxsize=1)
def text_pieces() -> tuple[tuple[str, float], ...]:
    """The 31741 ordinary pieces (ids 259-31999) with their scores: merges first, characters last.

    A higher score means sentencepiece merges earlier, so the learned merges keep their order and
    the fillers only apply where no learned merge does.
    """
    chars = _single_chars()
    wanted = TEXT_PIECES - len(SPECIAL_PIECES) - len(BYTE_PIECES) - len(chars)
    merges = list(_WHITESPACE_RUNS)
    merges += [m for m in learn_merges(_CORPUS, wanted) if m not in merges]
    merges += [SPACE + c for c in string.ascii_letters + string.digits if SPACE + c not in merges]
    taken = set(merges) | set(chars) | set(SPECIAL_PIECES) | set(BYTE_PIECES)
    # Letters first: unseen words then split into two-letter and letter-plus-piece chunks.
    letters = list(string.ascii_letters)
    base = letters + merges + [c for c in chars if c not in letters]
    merges += _fillers(base, wanted - len(merges), taken)
    if len(merges) != wanted:
        raise RuntimeError(f"built {len(merges)} merged pieces, wanted {wanted}")
    ordered = merges + chars
    return tuple((piece, -float(rank)) for rank, piece in enumerate(ordered))


def _single_chars() -> list[str]:
    chars = [chr(c) for low, high in _CHAR_RANGES for c in range(low, high + 1)]
    chars += [c for c in _EXTRA_CHARS if c not in chars]
    return chars


def learn_merges(corpus: str, limit: int) -> list[str]:
    """Classic BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair).

    Works on sentencepiece's view of the text (every word carries its leading space symbol) and
    runs until every word is one piece or `limit` merges exist. Returns the merged pieces in order.
    Pair counts are updated only for the words a merge touches, which keeps this well under a
    second for the built-in corpus.
    """
    text = SPACE + corpus.strip().replace(" ", SPACE).replace("\n", SPACE)
    units = Counter(_UNIT.findall(text))
    words = [tuple(unit) for unit in sorted(units)]
    counts = [units[unit] for unit in sorted(units)]
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for index, symbols in enumerate(words):
        _count_pairs(symbols, counts[index], index, pairs, where)
    # A lazy max-heap: stale entries (count changed since pushed) are skipped when popped.
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    merged: list[str] = []
    while len(merged) < limit and heap:
        negative, best = heapq.heappop(heap)
        if pairs.get(best) != -negative:
            continue
        merged.append(best[0] + best[1])
        touched: set[tuple[str, str]] = set()
        for index in sorted(where.pop(best)):
            touched.update(zip(words[index], words[index][1:], strict=False))
            _count_pairs(words[index], -counts[index], index, pairs, where)
            words[index] = _merge_pair(words[index], best)
            _count_pairs(words[index], counts[index], index, pairs, where)
            touched.update(zip(words[index], words[index][1:], strict=False))
        for pair in sorted(touched):
            if pair in pairs:
                heapq.heappush(heap, (-pairs[pair], pair))
    return merged


def _count_pairs(
    symbols: tuple[str, ...],
    count: int,
    index: int,
    pairs: Counter[tuple[str, str]],
    where: dict[tuple[str, str], set[int]],
) -> None:
    """Add (or with a negative count, remove) one word's adjacent pairs."""
    for pair in zip(symbols, symbols[1:], strict=False):
        pairs[pair] += count
        if pairs[pair] <= 0:
            del pairs[pair]
            where.pop(pair, None)
        elif count > 0:
            where.setdefault(pair, set()).add(index)


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _fillers(base: list[str], count: int, taken: set[str]) -> list[str]:
    """`count` new pieces, each the concatenation of two pieces of `base`, best-ranked first.

    Pairs are visited by increasing rank sum, so combinations of frequent pieces come first. The
    space symbol may only start a piece, as in sentencepiece's own vocabularies.
    """
    out: list[str] = []
    n = len(base)
    for total in range(2 * n - 1):
        for left in range(max(0, total - n + 1), min(total, n - 1) + 1):
            piece = base[left] + base[total - left]
            if len(piece) > MAX_FILLER_CHARS or SPACE in piece[1:] or piece in taken:
                continue
            out.append(piece)
            taken.add(piece)
            if len(out) == count:
                return out
    return out


# ---------------------------------------------------------------------------------------------
# JSON files


def _special_token(content: str) -> dict[str, object]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def special_tokens_map() -> dict[str, object]:
    return {
        "bos_token": _special_token("<s>"),
        "eos_token": _special_token("</s>"),
        "unk_token": _special_token("<unk>"),
    }


def tokenizer_config(added_speech_tokens: list[str]) -> dict[str, object]:
    """tokenizer_config.json; `added_speech_tokens` get ids 32000, 32001, ... as added tokens."""
    decoder: dict[str, object] = {}
    for index, content in enumerate(SPECIAL_PIECES):
        decoder[str(index)] = {**_special_token(content), "special": True}
    for offset, content in enumerate(added_speech_tokens):
        decoder[str(TEXT_PIECES + offset)] = {**_special_token(content), "special": False}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": True,
        "model_max_length": MAX_POSITIONS,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def model_config(vocab_size: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": INIT_STD,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def generation_config() -> dict[str, object]:
    return {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2}


def _write_json(path: Path, content: dict[str, object]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# pytorch_model.bin


def parameter_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Every parameter of LlamaForCausalLM, with Hugging Face names, in a fixed order."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, HIDDEN)}
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{prefix}.self_attn.{proj}.weight"] = (HIDDEN, HIDDEN)
        shapes[f"{prefix}.mlp.gate_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{prefix}.mlp.up_proj.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{prefix}.mlp.down_proj.weight"] = (HIDDEN, INTERMEDIATE)
        shapes[f"{prefix}.input_layernorm.weight"] = (HIDDEN,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (vocab_size, HIDDEN)
    return shapes


def random_state_dict(vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights: normal(0, 0.02) matrices, RMSNorm scales of one."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in parameter_shapes(vocab_size).items():
        if len(shape) == 1:
            state[name] = torch.ones(shape, dtype=torch.float32)
        else:
            draw = torch.randn(shape, generator=generator, dtype=torch.float32)
            state[name] = draw * INIT_STD
    return state


__all__ = ["speech_token_strings", "write_lm", "write_lms"]
