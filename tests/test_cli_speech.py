"""The speech commands of the real CLI (`python -m service ...`), run as subprocesses.

Every expected value is computed here in-process, from the rules of docs/format.md or from
`SpeechStack` on the same files, and compared with what the command printed or wrote.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from service.audio.decode import load_audio_file
from service.bench.sections import replace_section
from service.checkpoints.layout import BASE, EXPRESSIVE, VARIANTS, CheckpointLayout
from service.cli import parse_args
from service.errors import SpiritError
from service.speech.hubert import load_hubert
from service.speech.pipeline import SpeechStack
from service.units.tokens import Units, string_to_units, units_to_string
from tests.support.golden import BASE_STRING, EXPRESSIVE_STRING
from tests.support.paths import REPO

HOP = 640
# PCM16 keeps x * 32767 rounded; reading back divides by 32768: at most 1.5 LSB apart.
PCM16_TOLERANCE = 1.5 / 32768
HUBERT_KERNELS, HUBERT_STRIDES = (10, 3, 3, 3, 3, 2, 2, 2), (5, 2, 2, 2, 2, 2, 2, 2)
W2V2_KERNELS, W2V2_STRIDES = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)


def child_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a user who configured nothing but a cache directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPIRITLM_")}
    env.update(SPIRITLM_CACHE_DIR=str(cache_dir), SPIRITLM_DEVICE="cpu", **extra)
    return env


def cli(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "service", *map(str, args)]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def cli_ok(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def conv_frames(samples: int, kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    for kernel, stride in zip(kernels, strides, strict=True):
        samples = (samples - kernel) // stride + 1
    return samples


def expected_counts(samples: int) -> dict[str, int]:
    """Unit counts of one chunk (the table of docs/format.md#audio-input)."""
    return {
        "hubert": conv_frames(samples, HUBERT_KERNELS, HUBERT_STRIDES),
        "pitch": (samples // 80 + 1) // 16,
        "style": math.ceil(conv_frames(samples, W2V2_KERNELS, W2V2_STRIDES) / 50),
    }


def counts(units: dict[str, str]) -> dict[str, int]:
    return {name: len(value.split()) for name, value in units.items()}


def read_pcm16(path: Path) -> np.ndarray:
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    samples, _ = soundfile.read(str(path), dtype="float32")
    return samples


def assert_pcm16_equal(path: Path, expected: np.ndarray) -> None:
    written = read_pcm16(path)
    assert written.shape == expected.shape
    assert np.abs(expected).max() > 0.01  # not silence: the comparison means something
    assert np.abs(written - expected).max() <= PCM16_TOLERANCE


def stack(layout: CheckpointLayout, variant: str) -> SpeechStack:
    return SpeechStack(layout, variant, device="cpu")


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return child_env(tmp_path_factory.mktemp("cli-cache"))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-speech")


@pytest.fixture(scope="module")
def second_file(work: Path, speech_file: Path) -> Path:
    """2.5 s of the speech file as a 16-bit stereo WAV (channels are averaged on input)."""
    samples, rate = soundfile.read(str(speech_file), dtype="float32")
    part = samples[16000 : 16000 + 40000]
    path = work / "second.wav"
    soundfile.write(str(path), np.stack([part, 0.5 * part], axis=1), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def made(work: Path, env: dict[str, str]) -> tuple[CheckpointLayout, str]:
    root = work / "made-seed0"
    result = cli_ok("make-checkpoints", root, env=env)
    return CheckpointLayout(root), result.stderr


@pytest.fixture(scope="module")
def seed7(work: Path, env: dict[str, str]) -> CheckpointLayout:
    root = work / "made-seed7"
    cli_ok("make-checkpoints", root, "--seed", "7", env=env)
    return CheckpointLayout(root)


@pytest.fixture(scope="module")
def expressive_records(
    layout: CheckpointLayout, env: dict[str, str], speech_file: Path, second_file: Path
) -> list[dict]:
    args = ("tokenize", "--model", EXPRESSIVE, "--checkpoints", layout.root)
    return json_lines(cli_ok(*args, speech_file, second_file, "--json", env=env).stdout)


@pytest.fixture(scope="module")
def embedded_runs(
    tmp_path_factory: pytest.TempPathFactory, speech_file: Path, second_file: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Two base runs with neither --checkpoints nor SPIRITLM_CHECKPOINTS_DIR, one fresh cache."""
    fresh = child_env(tmp_path_factory.mktemp("fresh-cache"))
    first = cli_ok("tokenize", "--model", BASE, speech_file, second_file, "--json", env=fresh)
    again = cli_ok("tokenize", "--model", BASE, speech_file, env=fresh)
    return [first, again]


# ------------------------------------------------------------------------- make-checkpoints


def test_make_checkpoints_writes_every_official_file(made: tuple[CheckpointLayout, str]) -> None:
    written, progress = made
    for variant in VARIANTS:
        for path in written.speech_files(variant) + written.lm_files(variant):
            assert path.is_file() and path.stat().st_size > 0, path
    encoders = [written.hubert, written.hubert_quantizer, written.pitch_dir / "model.pt"]
    for path in [*encoders, written.style_dir / "pytorch_model.bin"]:
        assert f"wrote {path}" in progress
    for variant in VARIANTS:
        assert f"vocoder for {variant}: {written.vocoder_dir(variant)}" in progress
    assert progress.rstrip().endswith(f"checkpoints written to {written.root}")


def relative_files(root: Path) -> dict[str, bytes]:
    """The files of the two official sub-trees (the cache root also holds e.g. few-shot banks)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for tree in ("speech_tokenizer", "spiritlm_model")
        for path in sorted((root / tree).rglob("*"))
        if path.is_file()
    }


def test_make_checkpoints_is_deterministic_and_seeded(
    made: tuple[CheckpointLayout, str], seed7: CheckpointLayout, layout: CheckpointLayout
) -> None:
    # `layout` is another seed-0 run of the same generator (the embedded default).
    ours = relative_files(made[0].root)
    assert ours == relative_files(layout.root)
    other = relative_files(seed7.root)
    assert other.keys() == ours.keys()
    for variant in VARIANTS:
        for path in made[0].speech_files(variant):
            name = str(path.relative_to(made[0].root))
            if path.suffix in (".pt", ".bin"):
                assert other[name] != ours[name], name


# --------------------------------------------------------------------------------- tokenize


def test_tokenize_expressive_prints_units_and_tokens_per_file(
    expressive_records: list[dict], layout: CheckpointLayout, speech_file: Path, second_file: Path
) -> None:
    expressive = stack(layout, EXPRESSIVE)
    files = (speech_file, second_file)
    assert [record["audio"] for record in expressive_records] == [str(path) for path in files]
    for record, path in zip(expressive_records, files, strict=True):
        assert set(record) == {"audio", "units", "tokens"}
        wav = load_audio_file(path)
        assert counts(record["units"]) == expected_counts(len(wav))
        units = Units.from_dict(record["units"])
        assert record["tokens"] == units_to_string(units, expressive=True)
        assert record["tokens"] == expressive.encode_string(wav)
    units = expressive_records[0]["units"]
    assert counts(units) == {"hubert": 228, "pitch": 114, "style": 10}
    hubert = units["hubert"].split()
    # Not de-duplicated: consecutive repeats stay (the token string drops them).
    assert any(a == b for a, b in zip(hubert, hubert[1:], strict=False))
    assert len(set(hubert)) >= 10


def test_tokenize_base_uses_the_embedded_default_generated_once(
    embedded_runs: list[subprocess.CompletedProcess[str]],
    expressive_records: list[dict],
    layout: CheckpointLayout,
    speech_file: Path,
    second_file: Path,
) -> None:
    first, again = embedded_runs
    assert "generating the embedded default checkpoints" in first.stderr
    assert "wrote " in first.stderr  # the generation's progress goes to stderr...
    assert "generating" not in again.stderr  # ...and happens once
    records = json_lines(first.stdout)
    base = stack(layout, BASE)  # the embedded default is seed 0, as `layout`
    for record, path in zip(records, (speech_file, second_file), strict=True):
        assert record["audio"] == str(path)
        assert set(record["units"]) == {"hubert"}
        units = Units.from_dict(record["units"])
        assert record["tokens"] == units_to_string(units, expressive=False)
        assert record["tokens"] == base.encode_string(load_audio_file(path))
    # The base tokenizer gives the expressive one's HuBERT units (same HuBERT and quantizer).
    assert [r["units"]["hubert"] for r in records] == [
        r["units"]["hubert"] for r in expressive_records
    ]
    assert again.stdout == f"{speech_file}: 228 HuBERT units\n{records[0]['tokens']}\n"


def test_tokenize_loads_a_directory_made_with_another_seed(
    seed7: CheckpointLayout, expressive_records: list[dict], env: dict[str, str], speech_file: Path
) -> None:
    args = ("tokenize", "--model", EXPRESSIVE, "--checkpoints", seed7.root, speech_file, "--json")
    (record,) = json_lines(cli_ok(*args, env=env).stdout)
    assert counts(record["units"]) == {"hubert": 228, "pitch": 114, "style": 10}
    seed0 = expressive_records[0]["units"]
    assert record["units"]["hubert"] != seed0["hubert"]
    assert record["units"]["pitch"] != seed0["pitch"]
    assert record["tokens"] == stack(seed7, EXPRESSIVE).encode_string(load_audio_file(speech_file))


def rewrite_in_other_formats(source: CheckpointLayout, root: Path) -> tuple[CheckpointLayout, Path]:
    """A copy of the speech files using the other formats the loaders accept.

    HuBERT: legacy fairseq file (flat `args` namespace, weights under `model`); quantizer: k-means
    centres as a numpy array; style encoder: the newer weight-norm parameter names, without the
    training-only `masked_spec_embed`. Returns the layout and the k-means centres file.
    """
    shutil.copytree(source.speech_dir, root / "speech_tokenizer")
    target = CheckpointLayout(root)
    converted = torch.load(target.hubert, weights_only=True)
    flat = argparse.Namespace(**{**converted["task_cfg"], **converted["model_cfg"]})
    torch.save({"args": flat, "model": converted["model_weight"]}, target.hubert)

    dim = converted["model_cfg"]["encoder_embed_dim"]
    centres = np.random.default_rng(3).standard_normal((500, dim)).astype(np.float32)
    torch.save({"n_clusters": 500, "cluster_centers": centres}, target.hubert_quantizer)

    style_file = target.style_dir / "pytorch_model.bin"
    state = torch.load(style_file, weights_only=True)
    renamed = {
        name.replace("weight_g", "parametrizations.weight.original0").replace(
            "weight_v", "parametrizations.weight.original1"
        ): value
        for name, value in state.items()
        if "masked_spec_embed" not in name
    }
    assert renamed.keys() != state.keys()
    torch.save(renamed, style_file)
    centres_file = root / "centres.npy"
    np.save(centres_file, centres)
    return target, centres_file


def test_tokenize_loads_any_conforming_directory(
    work: Path,
    layout: CheckpointLayout,
    expressive_records: list[dict],
    env: dict[str, str],
    speech_file: Path,
) -> None:
    other, centres_file = rewrite_in_other_formats(layout, work / "other-formats")
    args = ("tokenize", "--model", EXPRESSIVE, "--checkpoints", other.root, speech_file, "--json")
    (record,) = json_lines(cli_ok(*args, env=env).stdout)
    # Units by nearest centre (float64, docs/format.md#phonetic-quantizer) on the features of the
    # unchanged HuBERT.
    features = load_hubert(layout.hubert).extract(torch.from_numpy(load_audio_file(speech_file)))
    x = features.double().numpy()
    c = np.load(centres_file).astype(np.float64)
    distances = (x**2).sum(1, keepdims=True) - 2 * x @ c.T + (c**2).sum(1)
    nearest = distances.argmin(1).tolist()
    assert record["units"]["hubert"] == " ".join(map(str, nearest))
    assert len(set(nearest)) >= 5
    # Pitch and style files hold the same weights in another spelling: same units.
    seed0 = expressive_records[0]["units"]
    assert (record["units"]["pitch"], record["units"]["style"]) == (seed0["pitch"], seed0["style"])


# ------------------------------------------------------------------------------- synthesize


def synthesize(env: dict[str, str], output: Path, *args: str | Path) -> np.ndarray:
    result = cli_ok("synthesize", *args, "-o", output, env=env)
    assert f"wrote {output}" in result.stderr
    return read_pcm16(output)


def test_synthesize_base_tokens_with_speaker(
    layout: CheckpointLayout, env: dict[str, str], work: Path
) -> None:
    output = work / "base-tokens.wav"
    args = ("--model", BASE, "--checkpoints", layout.root, "--tokens", BASE_STRING)
    synthesize(env, output, *args, "--speaker", "1")
    base = stack(layout, BASE)
    units = string_to_units(BASE_STRING).hubert
    assert len(units) == 167
    frames = sum(base.vocoder.durations(units))  # a string always goes through prediction
    assert frames != len(units)
    expected = base.decode(BASE_STRING, speaker=1)
    assert len(expected) == frames * HOP
    assert_pcm16_equal(output, expected)
    assert not np.allclose(expected, base.decode(BASE_STRING, speaker=2), atol=1e-3)


def test_synthesize_expressive_tokens(
    layout: CheckpointLayout, env: dict[str, str], work: Path
) -> None:
    output = work / "expressive-tokens.wav"
    args = ("--model", EXPRESSIVE, "--checkpoints", layout.root, "--tokens", EXPRESSIVE_STRING)
    synthesize(env, output, *args)
    expressive = stack(layout, EXPRESSIVE)
    frames = sum(expressive.vocoder.durations(string_to_units(EXPRESSIVE_STRING).hubert))
    expected = expressive.decode(EXPRESSIVE_STRING)
    assert len(expected) == frames * HOP
    assert_pcm16_equal(output, expected)


def test_synthesize_expressive_raw_units_from_tokenize_output(
    layout: CheckpointLayout, env: dict[str, str], work: Path, expressive_records: list[dict]
) -> None:
    record_file = work / "tokenize-record.json"
    record_file.write_text(json.dumps(expressive_records[0]))
    output = work / "expressive-units.wav"
    args = ("--model", EXPRESSIVE, "--checkpoints", layout.root, "--units-json", record_file)
    synthesize(env, output, *args)
    # Raw units: 114 pitch codes for 228 units, so no duration prediction
    # (docs/format.md#vocoding-and-duration-prediction).
    units = Units.from_dict(expressive_records[0]["units"])
    expected = stack(layout, EXPRESSIVE).decode(units)
    assert len(expected) == 228 * HOP
    assert_pcm16_equal(output, expected)


@pytest.mark.parametrize("dur_pred", [True, False])
def test_synthesize_base_plain_units_dict(
    layout: CheckpointLayout,
    env: dict[str, str],
    work: Path,
    embedded_runs: list[subprocess.CompletedProcess[str]],
    dur_pred: bool,
) -> None:
    units = json_lines(embedded_runs[0].stdout)[0]["units"]
    units_file = work / "base-units.json"
    units_file.write_text(json.dumps(units))
    output = work / f"base-units-{dur_pred}.wav"
    flags = () if dur_pred else ("--no-duration-prediction",)
    args = ("--model", BASE, "--checkpoints", layout.root, "--units-json", units_file, *flags)
    synthesize(env, output, *args)
    base = stack(layout, BASE)
    hubert = Units.from_dict(units).hubert
    # Base keeps the requested prediction, on the 228 units as given (not de-duplicated).
    frames = sum(base.vocoder.durations(hubert)) if dur_pred else len(hubert)
    expected = base.decode(Units.from_dict(units), dur_pred=dur_pred)
    assert len(expected) == frames * HOP
    assert_pcm16_equal(output, expected)


# ----------------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def broken(work: Path, layout: CheckpointLayout, speech_file: Path) -> dict[str, Path]:
    """Inputs that must fail: keyed by what is wrong with them."""
    missing_file = work / "missing-file"
    shutil.copytree(layout.speech_dir, missing_file / "speech_tokenizer")
    (CheckpointLayout(missing_file).hubert_quantizer).unlink()
    corrupt_model = work / "corrupt-model"
    shutil.copytree(layout.speech_dir, corrupt_model / "speech_tokenizer")
    CheckpointLayout(corrupt_model).hubert.write_bytes(b"not a torch file")
    audio = work / "broken.wav"
    audio.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    units_json = work / "units.json"
    units_json.write_text("{'hubert': '1 2 3'}")
    return {
        "missing_dir": work / "no-such-dir",
        "missing_file": missing_file,
        "corrupt_model": corrupt_model,
        "audio": audio,
        "units_json": units_json,
        "output": work / "never-written.wav",
        "speech": speech_file,
    }


# (command line with {placeholders} from `broken`, words the error line must contain)
ERROR_CASES = {
    "missing checkpoint dir": (
        "tokenize --checkpoints {missing_dir} {speech}",
        ["no-such-dir", "does not exist"],
    ),
    "missing file in the dir": (
        "tokenize --checkpoints {missing_file} {speech}",
        ["missing checkpoint files", "L11_quantizer_500.pt"],
    ),
    "corrupt model file": (
        "tokenize --checkpoints {corrupt_model} {speech}",
        ["mhubert_base_25hz.pt", "cannot be read"],
    ),
    "corrupt audio": ("tokenize {audio}", ["broken.wav", "could not decode"]),
    "units JSON that is not JSON": (
        "synthesize --units-json {units_json} -o {output}",
        ["units.json", "cannot read units JSON"],
    ),
    "speaker out of range": (
        "synthesize --tokens [Hu1][Hu2] --speaker 4 -o {output}",
        ["speaker 4", "out of range", "0..3"],
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_line_with_exit_code_2(
    case: str, broken: dict[str, Path], layout: CheckpointLayout, env: dict[str, str]
) -> None:
    template, needles = ERROR_CASES[case]
    args = [part.format(**broken) for part in template.split()]
    # Commands without --checkpoints take the directory from the environment.
    result = cli(*args, env={**env, "SPIRITLM_CHECKPOINTS_DIR": str(layout.root)})
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not broken["output"].exists()


# ----------------------------------------------------------------------------- bench speech


def test_replace_section_keeps_the_other_sections() -> None:
    text = "# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n"
    added = replace_section(text, "bench-speech", "first")
    assert added == text + "\n<!-- bench-speech:start -->\nfirst\n<!-- bench-speech:end -->\n"
    replaced = replace_section(added + "tail\n", "bench-speech", "second\n")
    assert (
        replaced
        == text + "\n<!-- bench-speech:start -->\nsecond\n<!-- bench-speech:end -->\ntail\n"
    )
    with pytest.raises(SpiritError, match="unbalanced"):
        replace_section(text + "<!-- bench-speech:end -->\n", "bench-speech", "x")


def bench_args(*argv: str) -> argparse.Namespace:
    """`bench speech` as the real CLI parses it."""
    return parse_args(["bench", "speech", *argv])


def test_bench_speech_measures_and_replaces_its_section(
    work: Path, second_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = work / "docs" / "benchmarks.md"
    output.parent.mkdir()
    output.write_text(
        "# Benchmarks\n\n<!-- bench-lm:start -->\nLM figures\n<!-- bench-lm:end -->\n"
    )
    args = bench_args(*f"--sizes tiny --repeats 1 --audio {second_file} --output {output}".split())
    assert args.handler(args) == 0
    tables = capsys.readouterr().out
    timing_rows = [line for line in tables.splitlines() if line.startswith("| tiny")]
    assert len(timing_rows) == 7 + 2  # 4 encode + 3 decode stages, 2 streaming rows
    seconds = 40000 / 16000
    for row in timing_rows[:4]:  # encode: RTF relative to the input's 2.5 s
        audio, wall, rtf, cpu = (float(cell) for cell in row.strip("|").split("|")[3:7])
        assert audio == seconds and wall > 0 and cpu > 0
        assert rtf == pytest.approx(wall / seconds, abs=2e-3)
    raw_units = timing_rows[6].strip("|").split("|")  # one frame per unit, no prediction
    frames = conv_frames(40000, HUBERT_KERNELS, HUBERT_STRIDES)
    assert "raw units" in raw_units[2] and float(raw_units[3]) == frames * HOP / 16000
    for row in timing_rows[7:]:
        latency, cpu, needed, worst, audio_ms = (float(c) for c in row.strip("|").split("|")[2:7])
        assert latency > 0 and cpu > 0 and 10 <= needed <= worst and audio_ms >= 10 * 40
    text = output.read_text()
    assert text.startswith(
        "# Benchmarks\n\n<!-- bench-lm:start -->\nLM figures\n<!-- bench-lm:end -->"
    )
    section = text.split("<!-- bench-speech:start -->\n")[1].split("<!-- bench-speech:end -->")[0]
    assert "Command: `spiritlm-serve bench speech --device cpu --repeats 1 --sizes tiny" in section
    assert f"torch {torch.__version__}" in section and "GPU: " in section
    assert all(row in section for row in timing_rows)
    assert text.count("<!-- bench-speech:start -->") == 1


def test_bench_speech_refuses_an_unusable_device() -> None:
    args = bench_args("--device", "nodevice")
    with pytest.raises(SpiritError, match="not a torch device"):
        args.handler(args)
