"""The tiny LM writer and our own token ids (docs/format.md#language-model, #token-vocabulary,
#generation-settings).

Reference: the slow sentencepiece `LlamaTokenizer` of transformers 4.x, which transformers 5 no
longer has. It runs in its own interpreter (scripts/make_tokenizer_reference_venv.sh), given by
SPIRITLM_TOKENIZER_REFERENCE_PYTHON or found at .cache/tokenizer-reference.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from service.checkpoints.layout import BASE, EXPRESSIVE, LM_FILES, VARIANTS, CheckpointLayout
from service.checkpoints.tiny_lm import sentencepiece_model, speech_token_strings, write_lms
from service.errors import CheckpointError
from service.lm.tokenizer import SpiritTokenizer, TokenKind
from tests.support.token_ids import HUBERT_IDS, PITCH_IDS, STYLE_IDS, TEXT_IDS
from tests.support.tokenizer_reference import run_reference

MODEL_VOCAB = {BASE: 32512, EXPRESSIVE: 32768}
TOKEN_COUNT = {BASE: 32503, EXPRESSIVE: 32667}


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[CheckpointLayout, list[str]]:
    lines: list[str] = []
    layout = CheckpointLayout(tmp_path_factory.mktemp("lm") / "checkpoints")
    write_lms(layout, seed=0, progress=lines.append)
    return layout, lines


@pytest.fixture(scope="module")
def layout(written: tuple[CheckpointLayout, list[str]]) -> CheckpointLayout:
    return written[0]


@pytest.fixture(scope="module")
def tokenizers(layout: CheckpointLayout) -> dict[str, SpiritTokenizer]:
    return {variant: SpiritTokenizer.from_dir(layout.lm_dir(variant)) for variant in VARIANTS}


# -------------------------------------------------------------------------------- prompt sets


def unit_string(rng: random.Random, count: int, expressive: bool) -> str:
    """A run shaped like the output of docs/format.md#units-to-token-string: style, pitch and
    hubert tokens interleaved."""
    tokens = []
    for i in range(count):
        if expressive and i % 25 == 0:
            tokens.append(f"[St{rng.randrange(100)}]")
        if expressive and i % 2 == 0:
            tokens.append(f"[Pi{rng.randrange(64)}]")
        tokens.append(f"[Hu{rng.randrange(501)}]")
    return "".join(tokens)


FRAGMENTS = [
    "The", " largest", " country", "hello", " world", "abc", "def", "x", "Speech", "Text",
    " ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "\u2581", "\u2581\u2581",
    "😀", "👩‍👩‍👧", "émigré", "Ωμέγα", "東京", "naïve café", "\u00a0", "\u200b", "ﬁ",
    "[Text]", "[Speech]", "[Hu0]", "[Hu12]", "[Hu500]", "[Pi0]", "[Pi63]", "[St0]", "[St99]",
    "[Hu501]", "[Pi64]", "[St100]", "[Hu", "Hu12]", "[", "]", "[[", "]]", "[Hu-1]", "[HU12]",
    "[Text", "Speech]", "<s>", "</s>", "<unk>", "<s", "s>", "<0x41>", "12", "3.5", ",", "?!",
]  # fmt: skip


def random_prompts(rng: random.Random, count: int) -> list[str]:
    prompts = []
    for _ in range(count):
        size = rng.randrange(1, 12)
        prompts.append("".join(rng.choice(FRAGMENTS) for _ in range(size)))
    return prompts


def prompt_set(variant: str) -> list[str]:
    rng = random.Random(f"prompts-{variant}")
    expressive = variant == EXPRESSIVE
    units = unit_string(rng, 60, expressive)
    long_run = unit_string(rng, 3000, expressive)
    curated = [
        "",
        "The largest country in the world is",
        "[Text]The largest country in the world is",
        "[Text]The largest",
        "[Speech][Hu12][Hu5][Text] hello",
        "[Speech][Hu12][Hu5][Text]hello",
        "abc[Hu12]def",
        "abc [Hu12] def",
        "[Hu12]abc",
        " leading space",
        "trailing space ",
        "  multiple   inner    spaces  ",
        "line one\nline two\n\n\nline five\n",
        "tab\tseparated\tvalues",
        "emoji 😀 and ZWJ 👩‍👩‍👧 fall back to bytes",
        "unicode: émigré, Ωμέγα, 東京, naïve",
        "literal <s> and </s> and <unk> inside text",
        "[Text] spaced [Speech] markers [Text]",
        "[Text]\n[Speech]\n",
        "\u2581already\u2581escaped",
        "[Hu500][Pi63][St99][Hu0][Pi0][St0]",
        "not tokens: [Hu501] [Pi64] [St100] [hu1] [Hu 1]",
        # examples from docs/format.md#building-prompts
        f"[Speech]{units}[Text]",
        "[Text]T[Speech]",
        f"[Speech]{units}",
        f"[Text]ab[Speech]{units}[Text]c",
        # long speech runs, also glued to text
        f"[Speech]{long_run}",
        f"[Text]Say it.[Speech]{long_run}[Text] Done.",
        f"words{long_run}words",
    ]
    return curated + random_prompts(rng, 300)


def random_id_sequences(rng: random.Random, num_tokens: int, count: int) -> list[list[int]]:
    """Arbitrary generations: any id with a token, biased towards specials, bytes and units."""
    pools = [range(0, 3), range(3, 259), range(259, 32000), range(32000, num_tokens)]
    sequences = []
    for _ in range(count):
        length = rng.randrange(1, 40)
        sequences.append([rng.choice(rng.choice(pools)) for _ in range(length)])
    return sequences


@pytest.fixture(scope="module")
def reference_runs(
    reference_python: Path, layout: CheckpointLayout, tokenizers: dict[str, SpiritTokenizer]
) -> dict[str, dict[str, Any]]:
    """One reference call per variant: ids of the prompt set, texts of our ids and random ids."""
    runs = {}
    for variant in VARIANTS:
        tokenizer = tokenizers[variant]
        prompts = prompt_set(variant)
        ours = [tokenizer.encode(prompt) for prompt in prompts]
        rng = random.Random(f"ids-{variant}")
        extra = random_id_sequences(rng, tokenizer.num_tokens, 300)
        answer = run_reference(reference_python, layout.lm_dir(variant), prompts, ours + extra)
        runs[variant] = {"prompts": prompts, "ours": ours, "decoded_ids": ours + extra, **answer}
    return runs


# ------------------------------------------------------------------------- encode vs reference


@pytest.mark.parametrize("variant", VARIANTS)
def test_encode_matches_slow_llama_tokenizer(
    variant: str, reference_runs: dict[str, dict[str, Any]]
) -> None:
    run = reference_runs[variant]
    mismatches = [
        (prompt[:80], ours[:12], ref[:12])
        for prompt, ours, ref in zip(run["prompts"], run["ours"], run["ids"], strict=True)
        if ours != ref
    ]
    assert not mismatches, mismatches[:5]


def test_forms_differ_where_expected(reference_runs: dict[str, dict[str, Any]]) -> None:
    """In-model pieces get the dummy-prefix ▁ before a leading marker; added tokens don't."""
    base = dict(zip(reference_runs[BASE]["prompts"], reference_runs[BASE]["ids"], strict=True))
    expr = dict(
        zip(reference_runs[EXPRESSIVE]["prompts"], reference_runs[EXPRESSIVE]["ids"], strict=True)
    )
    prompt = "[Text]The largest country in the world is"
    assert base[prompt][0] == expr[prompt][0] == 1
    assert base[prompt][2] == expr[prompt][1] == 32000
    assert len(base[prompt]) == len(expr[prompt]) + 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_strings_match_reference(
    variant: str,
    reference_runs: dict[str, dict[str, Any]],
    tokenizers: dict[str, SpiritTokenizer],
) -> None:
    tokenizer = tokenizers[variant]
    tokens = reference_runs[variant]["tokens"]
    assert tokenizer.num_tokens == len(tokens) == TOKEN_COUNT[variant]
    assert [tokenizer.token_string(i) for i in range(len(tokens))] == tokens


# ------------------------------------------------------------------------- decode vs reference


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_matches_reference(
    variant: str,
    reference_runs: dict[str, dict[str, Any]],
    tokenizers: dict[str, SpiritTokenizer],
) -> None:
    run = reference_runs[variant]
    tokenizer = tokenizers[variant]
    for ids, plain, spaced in zip(
        run["decoded_ids"], run["decoded"], run["decoded_spaced"], strict=True
    ):
        assert tokenizer.decode_ids(ids) == plain, ids[:20]
        assert tokenizer.decode_ids(ids, spaces_between_added_tokens=True) == spaced, ids[:20]


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_round_trips_the_prompt_examples(
    variant: str, tokenizers: dict[str, SpiritTokenizer]
) -> None:
    """Decoding <s> + prompt ids gives the prompt back (docs/format.md#language-model), for
    prompts shaped as in docs/format.md#building-prompts."""
    tokenizer = tokenizers[variant]
    rng = random.Random(7)
    units = unit_string(rng, 500, variant == EXPRESSIVE)
    prompts = [
        "[Text]The largest country in the world is",
        f"[Speech]{units}[Text]",
        "[Text]Say hello.[Speech]",
        f"[Speech]{units}",
        f"[Text]ab[Speech]{units}[Text]c",
        "abc[Hu12]def",
    ]
    for prompt in prompts:
        assert tokenizer.decode_ids(tokenizer.encode(prompt)) == prompt


def test_added_token_flags_match_reference(
    reference_python: Path,
    layout: CheckpointLayout,
    tokenizers: dict[str, SpiritTokenizer],
    tmp_path: Path,
) -> None:
    """lstrip/rstrip/single_word eat or join neighbouring text the way the reference does."""
    lm_dir = copy_tokenizer_files(layout, EXPRESSIVE, tmp_path / "lm")
    flags = {"32000": "rstrip", "32001": "lstrip", "32014": "single_word", "32015": "rstrip"}

    def set_flags(config: dict[str, Any]) -> None:
        for key, flag in flags.items():
            config["added_tokens_decoder"][key][flag] = True

    edit_json(lm_dir / "tokenizer_config.json", set_flags)
    tokenizer = SpiritTokenizer.from_dir(lm_dir)
    rng = random.Random("flags")
    prompts = [
        "a [Text]  b [Speech] c",
        "x[Hu12]y",
        "x [Hu12] y",
        "[Hu12]y [Hu13]  z",
        "  [Speech]",
        "[Text]  ",
    ]
    prompts += random_prompts(rng, 200)
    ours = [tokenizer.encode(prompt) for prompt in prompts]
    answer = run_reference(reference_python, lm_dir, prompts, [])
    assert ours == answer["ids"]
    unflagged = tokenizers[EXPRESSIVE]
    assert sum(ids != unflagged.encode(p) for ids, p in zip(ours, prompts, strict=True)) > 10


def test_decode_rejects_padding_ids(tokenizers: dict[str, SpiritTokenizer]) -> None:
    with pytest.raises(ValueError, match="no token"):
        tokenizers[BASE].decode_ids([1, 32503])


# ---------------------------------------------------------------------------- kinds and units


@pytest.mark.parametrize("variant", VARIANTS)
def test_unit_of_follows_the_official_id_map(
    variant: str, tokenizers: dict[str, SpiritTokenizer]
) -> None:
    tokenizer = tokenizers[variant]
    streams = {"hubert": (32002, 501), "pitch": (32503, 64), "style": (32567, 100)}
    if variant == BASE:
        del streams["pitch"], streams["style"]
    expected = {}
    for stream, (first, count) in streams.items():
        expected.update({first + value: (stream, value) for value in range(count)})
    for token_id in range(tokenizer.num_tokens):
        assert tokenizer.unit_of(token_id) == expected.get(token_id)
    assert tokenizer.unit_ids("hubert") == list(range(32002, 32503))
    assert tokenizer.unit_id("hubert", 12) == 32014
    assert tokenizer.expressive == (variant == EXPRESSIVE)


@pytest.mark.parametrize("variant", VARIANTS)
def test_unit_of_agrees_with_reference_token_strings(
    variant: str,
    reference_runs: dict[str, dict[str, Any]],
    tokenizers: dict[str, SpiritTokenizer],
) -> None:
    tokenizer = tokenizers[variant]
    names = {"Hu": "hubert", "Pi": "pitch", "St": "style"}
    for token_id, string in enumerate(reference_runs[variant]["tokens"]):
        match = re.fullmatch(r"\[(Hu|Pi|St)(\d+)\]", string)
        parsed = (names[match.group(1)], int(match.group(2))) if match else None
        assert tokenizer.unit_of(token_id) == parsed, string


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_kinds(variant: str, tokenizers: dict[str, SpiritTokenizer]) -> None:
    tokenizer = tokenizers[variant]
    kind = tokenizer.token_kind
    assert (kind(0), kind(1), kind(2)) == (TokenKind.SPECIAL,) * 3
    assert kind(3) == kind(31999) == TokenKind.TEXT
    assert kind(32000) == TokenKind.TEXT_MARKER
    assert kind(32001) == TokenKind.SPEECH_MARKER
    assert kind(32002) == kind(32502) == TokenKind.HUBERT
    padding = range(TOKEN_COUNT[variant], MODEL_VOCAB[variant])
    assert all(kind(i) == TokenKind.PADDING for i in padding)
    assert tokenizer.vocab_size == MODEL_VOCAB[variant]
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
    with pytest.raises(ValueError):
        kind(MODEL_VOCAB[variant])
    if variant == EXPRESSIVE:
        assert kind(32503) == kind(32566) == TokenKind.PITCH
        assert kind(32567) == kind(32666) == TokenKind.STYLE


def test_generated_ids_map_back_without_text(tokenizers: dict[str, SpiritTokenizer]) -> None:
    tokenizer = tokenizers[EXPRESSIVE]
    ids = tokenizer.encode("[Speech][St3][Pi7][Hu42][Hu9][Text]")
    assert [tokenizer.unit_of(i) for i in ids[2:6]] == [
        ("style", 3),
        ("pitch", 7),
        ("hubert", 42),
        ("hubert", 9),
    ]
    assert tokenizer.token_kind(ids[1]) == TokenKind.SPEECH_MARKER
    assert tokenizer.token_kind(ids[-1]) == TokenKind.TEXT_MARKER


# --------------------------------------------------------------------------- forbidden tokens


def test_allowed_ids_are_the_complement_of_the_banned_sets(
    tokenizers: dict[str, SpiritTokenizer],
) -> None:
    base, expr = tokenizers[BASE], tokenizers[EXPRESSIVE]
    # docs/format.md#banned-ids-per-output-modality bans TEXT: markers + unit ids; SPEECH:
    # markers + 0..31999. Padding rows have no token.
    assert set(base.allowed_ids("TEXT", expressive=False)) == TEXT_IDS
    assert set(expr.allowed_ids("text", expressive=True)) == TEXT_IDS
    assert set(base.allowed_ids("SPEECH", expressive=False)) == HUBERT_IDS
    assert set(expr.allowed_ids("speech", expressive=True)) == HUBERT_IDS | PITCH_IDS | STYLE_IDS
    assert base.allowed_ids("ARBITRARY", expressive=False) is None
    assert expr.allowed_ids("arbitrary", expressive=True) is None
    # The base ban list never covers pitch/style ids.
    assert set(expr.allowed_ids("TEXT", expressive=False)) == TEXT_IDS | PITCH_IDS | STYLE_IDS
    with pytest.raises(CheckpointError):
        base.allowed_ids("TEXT", expressive=True)
    with pytest.raises(ValueError):
        base.allowed_ids("VIDEO", expressive=False)


# --------------------------------------------------------------------------------------- speed


@pytest.mark.parametrize("variant", VARIANTS)
def test_long_speech_runs_encode_fast(variant: str, tokenizers: dict[str, SpiritTokenizer]) -> None:
    tokenizer = tokenizers[variant]
    run = unit_string(random.Random(3), 10_000, variant == EXPRESSIVE)
    started = time.perf_counter()
    ids = tokenizer.encode(f"[Speech]{run}[Text]")
    elapsed = time.perf_counter() - started
    assert tokenizer.decode_ids(ids) == f"[Speech]{run}[Text]"
    assert elapsed < 1.0, f"{elapsed:.3f} s for {len(ids)} ids"


# -------------------------------------------------------------------------------- file checks


def copy_tokenizer_files(layout: CheckpointLayout, variant: str, target: Path) -> Path:
    target.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(layout.lm_dir(variant) / name, target / name)
    shutil.copy(layout.lm_dir(variant) / "config.json", target / "config.json")
    return target


def edit_json(path: Path, change: Any) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def test_missing_tokenizer_model(layout: CheckpointLayout, tmp_path: Path) -> None:
    lm_dir = copy_tokenizer_files(layout, BASE, tmp_path / "lm")
    (lm_dir / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError) as error:
        SpiritTokenizer.from_dir(lm_dir)
    assert error.value.path == lm_dir / "tokenizer.model"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_tokenizer_model(layout: CheckpointLayout, tmp_path: Path, damage: str) -> None:
    lm_dir = copy_tokenizer_files(layout, BASE, tmp_path / "lm")
    model = lm_dir / "tokenizer.model"
    data = model.read_bytes()
    model.write_bytes(
        b"\xff\x00not a model" * 10 if damage == "garbage" else data[: len(data) // 2]
    )
    with pytest.raises(CheckpointError) as error:
        SpiritTokenizer.from_dir(lm_dir)
    assert error.value.path == model


def test_added_speech_token_at_wrong_id(layout: CheckpointLayout, tmp_path: Path) -> None:
    lm_dir = copy_tokenizer_files(layout, EXPRESSIVE, tmp_path / "lm")

    def swap(config: dict[str, Any]) -> None:
        decoder = config["added_tokens_decoder"]
        decoder["32005"], decoder["32006"] = decoder["32006"], decoder["32005"]

    edit_json(lm_dir / "tokenizer_config.json", swap)
    with pytest.raises(CheckpointError, match=r"\[Hu[34]\]") as error:
        SpiritTokenizer.from_dir(lm_dir)
    assert error.value.path == lm_dir / "tokenizer_config.json"


def test_added_speech_token_missing(layout: CheckpointLayout, tmp_path: Path) -> None:
    lm_dir = copy_tokenizer_files(layout, EXPRESSIVE, tmp_path / "lm")
    edit_json(lm_dir / "tokenizer_config.json", lambda c: c["added_tokens_decoder"].pop("32666"))
    with pytest.raises(CheckpointError, match=r"\[St99\]"):
        SpiritTokenizer.from_dir(lm_dir)


def test_in_model_speech_pieces_in_wrong_order(layout: CheckpointLayout, tmp_path: Path) -> None:
    lm_dir = copy_tokenizer_files(layout, BASE, tmp_path / "lm")
    pieces = speech_token_strings(BASE)
    pieces[2], pieces[3] = pieces[3], pieces[2]  # [Hu0] <-> [Hu1]
    (lm_dir / "tokenizer.model").write_bytes(sentencepiece_model(pieces))
    with pytest.raises(CheckpointError, match=r"\[Hu[01]\]") as error:
        SpiritTokenizer.from_dir(lm_dir)
    assert error.value.path == lm_dir / "tokenizer.model"


def test_speech_tokens_absent(layout: CheckpointLayout, tmp_path: Path) -> None:
    lm_dir = copy_tokenizer_files(layout, BASE, tmp_path / "lm")
    (lm_dir / "tokenizer.model").write_bytes(sentencepiece_model([]))
    with pytest.raises(CheckpointError, match=r"\[Text\] is missing"):
        SpiritTokenizer.from_dir(lm_dir)


def test_vocab_size_smaller_than_tokenizer(layout: CheckpointLayout, tmp_path: Path) -> None:
    lm_dir = copy_tokenizer_files(layout, EXPRESSIVE, tmp_path / "lm")
    edit_json(lm_dir / "config.json", lambda c: c.update(vocab_size=32512))
    with pytest.raises(CheckpointError) as error:
        SpiritTokenizer.from_dir(lm_dir)
    assert error.value.path == lm_dir / "config.json"


def test_invalid_tokenizer_config(layout: CheckpointLayout, tmp_path: Path) -> None:
    lm_dir = copy_tokenizer_files(layout, EXPRESSIVE, tmp_path / "lm")
    (lm_dir / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError) as error:
        SpiritTokenizer.from_dir(lm_dir)
    assert error.value.path == lm_dir / "tokenizer_config.json"


# ------------------------------------------------------------------------------------- writer


def test_writer_makes_the_six_files_and_reports_progress(
    written: tuple[CheckpointLayout, list[str]],
) -> None:
    layout, lines = written
    for variant in VARIANTS:
        assert sorted(p.name for p in layout.lm_dir(variant).iterdir()) == sorted(LM_FILES)
        assert any(variant in line for line in lines)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tokenizer_model_is_llama_like(variant: str, layout: CheckpointLayout) -> None:
    proto = sp_pb2.ModelProto()
    proto.ParseFromString((layout.lm_dir(variant) / "tokenizer.model").read_bytes())
    kind = sp_pb2.ModelProto.SentencePiece
    pieces = list(proto.pieces)
    assert [(p.piece, p.type) for p in pieces[:3]] == [
        ("<unk>", kind.UNKNOWN),
        ("<s>", kind.CONTROL),
        ("</s>", kind.CONTROL),
    ]
    assert [p.piece for p in pieces[3:259]] == [f"<0x{b:02X}>" for b in range(256)]
    assert all(p.type == kind.BYTE for p in pieces[3:259])
    assert all(p.type == kind.NORMAL for p in pieces[259:32000])
    in_model = [p.piece for p in pieces[32000:]]
    assert in_model == (speech_token_strings(BASE) if variant == BASE else [])
    assert all(p.type == kind.USER_DEFINED for p in pieces[32000:])
    spec = proto.normalizer_spec
    assert spec.name == "identity" and spec.add_dummy_prefix
    assert not spec.remove_extra_whitespaces
    assert proto.trainer_spec.byte_fallback
    assert proto.trainer_spec.model_type == sp_pb2.TrainerSpec.BPE


def test_english_splits_into_multi_character_pieces(tokenizers: dict[str, SpiritTokenizer]) -> None:
    tokenizer = tokenizers[BASE]
    sentence = "Good morning! Could you tell me how the weather will change this evening?"
    ids = tokenizer.encode(sentence)[1:]
    assert len(sentence) / len(ids) > 3.0
    assert all(tokenizer.token_kind(i) == TokenKind.TEXT for i in ids)
    assert not any(3 <= i < 259 for i in ids)  # no byte fallback for plain English


def test_expressive_config_has_speech_added_tokens(layout: CheckpointLayout) -> None:
    config = json.loads((layout.lm_dir(EXPRESSIVE) / "tokenizer_config.json").read_text())
    decoder = config["added_tokens_decoder"]
    assert decoder["32000"]["content"] == "[Text]"
    assert decoder["32666"]["content"] == "[St99]"
    assert not decoder["32014"]["special"] and not decoder["32014"]["normalized"]
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["legacy"] is True
    assert (config["add_bos_token"], config["add_eos_token"]) == (True, False)
    base = json.loads((layout.lm_dir(BASE) / "tokenizer_config.json").read_text())
    assert sorted(base["added_tokens_decoder"]) == ["0", "1", "2"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformers_loads_the_lm_and_runs_it(variant: str, layout: CheckpointLayout) -> None:
    from transformers import LlamaForCausalLM

    lm_dir = layout.lm_dir(variant)
    model, info = LlamaForCausalLM.from_pretrained(lm_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    config = model.config
    assert config.hidden_size // config.num_attention_heads == 64
    assert config.vocab_size == MODEL_VOCAB[variant]
    assert not config.tie_word_embeddings
    tokenizer = SpiritTokenizer.from_dir(lm_dir)
    ids = torch.tensor([tokenizer.encode("[Text]The largest country in the world is")])
    model.eval()
    with torch.inference_mode():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], MODEL_VOCAB[variant])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    saved = torch.load(lm_dir / "pytorch_model.bin", weights_only=True)
    assert torch.equal(model.lm_head.weight, saved["lm_head.weight"])


def test_writer_is_deterministic(layout: CheckpointLayout, tmp_path: Path) -> None:
    again = CheckpointLayout(tmp_path / "again")
    write_lms(again, seed=0, progress=lambda line: None)
    other = CheckpointLayout(tmp_path / "other")
    write_lms(other, seed=1, progress=lambda line: None)
    for variant in VARIANTS:
        for name in LM_FILES:
            first = (layout.lm_dir(variant) / name).read_bytes()
            assert (again.lm_dir(variant) / name).read_bytes() == first, name
            changed = (other.lm_dir(variant) / name).read_bytes() != first
            assert changed == (name == "pytorch_model.bin"), name


def test_variants_get_different_weights(layout: CheckpointLayout) -> None:
    base = torch.load(layout.lm_dir(BASE) / "pytorch_model.bin", weights_only=True)
    expr = torch.load(layout.lm_dir(EXPRESSIVE) / "pytorch_model.bin", weights_only=True)
    rows = min(base["lm_head.weight"].shape[0], expr["lm_head.weight"].shape[0])
    assert not torch.equal(base["lm_head.weight"][:rows], expr["lm_head.weight"][:rows])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
