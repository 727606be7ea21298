"""/v1/audio/* (OpenAI's transcription and speech APIs) and /v1/speech/{tokenize,detokenize},
against the real LM worker (vLLM), speech worker and gateway, with the official `openai` SDK as
the client where an OpenAI endpoint exists."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import openai
import pytest
import soundfile

from service.audio.decode import decode_audio, load_audio_file
from service.checkpoints.embedded_bank import EMBEDDED_BANK_DIR
from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout
from service.errors import CheckpointError
from service.gateway.fewshot import ExemplarBank
from service.lm.client import LMClient
from service.lm.prompt import asr_prompt, classification_prompt, tts_prompt
from service.lm.tokenizer import SpiritTokenizer
from service.process import free_port
from service.speech.pipeline import SpeechStack
from service.units.tokens import units_to_string
from tests.support.pcm import assert_pcm16_close, assert_samples_close

pytestmark = pytest.mark.slow

SEED = 7
TTS_TOKENS = 24  # short generations keep the file fast
ASR_TOKENS = 20
CLIP_SECONDS = 2.0
BANK_TEXTS = ("the first clip of the bank", "a second clip", "never used: two shots")
CLASS_LABELS = ("calm", "excited speech", "calm")


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(servers) -> str:  # noqa: ANN001
    return servers.gateway(BASE)


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory, speech_file: Path) -> Path:
    """A custom exemplar bank: three 1.5 s pieces of the test recording."""
    directory = tmp_path_factory.mktemp("bank")
    wav, rate = soundfile.read(speech_file, dtype="float32")
    lines = []
    for index, text in enumerate(BANK_TEXTS):
        piece = wav[index * rate : index * rate + rate * 3 // 2]
        soundfile.write(directory / f"{index}.flac", piece, rate)
        lines.append(json.dumps({"audio": f"{index}.flac", "text": text}))
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory, bank: Path) -> Path:
    """A classification bank: the custom bank's audio, labelled."""
    directory = tmp_path_factory.mktemp("classes")
    lines = []
    for index, label in enumerate(CLASS_LABELS):
        (directory / f"{index}.flac").write_bytes((bank / f"{index}.flac").read_bytes())
        lines.append(json.dumps({"audio": f"{index}.flac", "text": label}))
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="module")
def limited(servers, bank: Path, classes: Path) -> str:  # noqa: ANN001
    """A gateway with its own banks (2 shots, given by env var) and small limits."""
    port = free_port()
    argv = [sys.executable, "-m", "service", "gateway", "--port", str(port), "--model", BASE]
    argv += ["--lm-url", servers.lm(), "--speech-url", servers.speech(), "--fewshot-shots", "2"]
    argv += ["--max-audio-seconds", "4", "--max-input-chars", "64", "--max-body-bytes", "300000"]
    url = f"http://127.0.0.1:{port}"
    env = {
        **servers.env,
        "SPIRITLM_FEWSHOT_DIR": str(bank),
        "SPIRITLM_CLASSIFICATION_DIR": str(classes),
    }
    servers.spawn("gateway-audio-limits", argv, url, "/ready", 120, env=env)
    return url


@pytest.fixture(scope="module")
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=300.0) as session:
        yield session


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, speech_file: Path) -> Path:
    """Two seconds of the test recording (short audio keeps prompts and tests small)."""
    wav, rate = soundfile.read(speech_file, dtype="float32")
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    soundfile.write(path, wav[rate : rate + int(CLIP_SECONDS * rate)], rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def tokenizers(layout: CheckpointLayout) -> dict[str, SpiritTokenizer]:
    return {model: SpiritTokenizer.from_dir(layout.lm_dir(model)) for model in (BASE, EXPRESSIVE)}


@pytest.fixture(scope="module")
def encode(servers) -> Callable[[bytes, str], str]:  # noqa: ANN001
    """Token string of audio bytes, from the speech worker (the gateway's own source)."""

    def run(data: bytes, model: str) -> str:
        response = httpx.post(
            servers.speech() + "/v1/encode", params={"model": model}, content=data, timeout=300
        )
        response.raise_for_status()
        return response.json()["tokens"]

    return run


def bank_shots(
    directory: Path, count: int, model: str, encode: Callable[[bytes, str], str]
) -> list[tuple[str, str]]:
    """(text, tokens) of a bank's first `count` exemplars, read from its manifest."""
    lines = (directory / "manifest.jsonl").read_text().splitlines()[:count]
    entries = [json.loads(line) for line in lines]
    return [(e["text"], encode((directory / e["audio"]).read_bytes(), model)) for e in entries]


def embedded_bank(layout: CheckpointLayout) -> Path:
    return layout.root / EMBEDDED_BANK_DIR


@pytest.fixture(scope="module")
def reference_pcm(client: openai.OpenAI) -> bytes:
    """Streamed pcm of a seeded generation, with the time each piece arrived."""
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input="hello there",
        response_format="pcm",
        extra_body={"seed": SEED, "max_tokens": TTS_TOKENS},
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        assert response.headers["transfer-encoding"] == "chunked"
        pieces = list(response.iter_bytes())
    assert len(pieces) >= 2, "audio should arrive in several pieces as it is vocoded"
    return b"".join(pieces)


def speech_body(**fields: object) -> dict:
    body = {"input": "hello there", "seed": SEED, "max_tokens": TTS_TOKENS}
    return {**body, **fields}


def generated_tokens(http: httpx.Client, prompt: str, modality: str, max_tokens: int) -> str:
    response = http.post(
        "/v1/generate",
        json={
            "prompt": prompt,
            "output_modality": modality,
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )
    assert response.status_code == 200, response.text
    segments = response.json()["segments"]
    return "".join(s["tokens"] if s["type"] == "speech" else s["text"] for s in segments)


def pcm_ints(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.int32)


def decoded_ints(data: bytes) -> np.ndarray:
    """Decode a lossless stream (flac) with FFmpeg to its int16 samples."""
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    return np.concatenate(frames).astype(np.int32)


# ---- transcriptions -------------------------------------------------------------------------


def test_transcription_is_the_few_shot_asr_answer(
    client: openai.OpenAI,
    http: httpx.Client,
    clip: Path,
    layout: CheckpointLayout,
    tokenizers: dict[str, SpiritTokenizer],
    encode: Callable[[bytes, str], str],
) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=clip.open("rb"),
        temperature=0,
        extra_body={"max_tokens": ASR_TOKENS},
    )
    # The prompt: the embedded bank's first 3 shots, then the clip, as docs/fewshot.md says.
    shots = bank_shots(embedded_bank(layout), 3, BASE, encode)
    prompt = asr_prompt([(tokens, text) for text, tokens in shots], encode(clip.read_bytes(), BASE))
    prompt_ids = tokenizers[BASE].encode(prompt)
    assert result.usage.type == "tokens"
    assert result.usage.input_tokens == len(prompt_ids)
    audio_ids = [i for i in prompt_ids if tokenizers[BASE].unit_of(i) is not None]
    assert result.usage.input_token_details.audio_tokens == len(audio_ids)
    assert 0 < result.usage.output_tokens <= ASR_TOKENS
    # Same greedy text as the native endpoint gives for that prompt, up to the first newline.
    expected = generated_tokens(http, prompt, "text", ASR_TOKENS).strip().split("\n")[0].strip()
    assert result.text == expected
    assert "\n" not in result.text


def test_transcription_formats_carry_the_same_text(client: openai.OpenAI, clip: Path) -> None:
    def create(fmt: str):  # noqa: ANN202
        return client.audio.transcriptions.create(
            model="whisper-1",
            file=clip.open("rb"),
            response_format=fmt,
            temperature=0,
            language="en",
            extra_body={"max_tokens": ASR_TOKENS},
        )

    text = create("json").text
    assert create("text") == text + "\n"
    assert create("srt") == f"1\n00:00:00,000 --> 00:00:02,000\n{text}\n\n"
    assert create("vtt") == f"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n{text}\n\n"
    verbose = create("verbose_json")
    assert verbose.text == text
    assert verbose.duration == pytest.approx(CLIP_SECONDS)
    assert verbose.language == "english"  # what was transcribed, not an echo of the request
    [segment] = verbose.segments
    assert (segment.start, segment.end, segment.text) == (0.0, verbose.duration, text)
    assert 0 < len(segment.tokens) <= ASR_TOKENS
    assert verbose.usage.seconds == pytest.approx(CLIP_SECONDS)


def test_streamed_transcription_adds_up(client: openai.OpenAI, clip: Path) -> None:
    whole = client.audio.transcriptions.create(
        model="whisper-1", file=clip.open("rb"), temperature=0, extra_body={"max_tokens": 12}
    )
    events = list(
        client.audio.transcriptions.create(
            model="whisper-1",
            file=clip.open("rb"),
            temperature=0,
            stream=True,
            extra_body={"max_tokens": 12},
        )
    )
    *deltas, done = events
    assert deltas and all(event.type == "transcript.text.delta" for event in deltas)
    assert done.type == "transcript.text.done"
    assert "".join(event.delta for event in deltas).strip() == done.text == whole.text
    assert done.usage.input_tokens == whole.usage.input_tokens
    assert done.usage.output_tokens == whole.usage.output_tokens


def test_custom_bank_and_prompt_context(
    limited: str,
    clip: Path,
    bank: Path,
    tokenizers: dict[str, SpiritTokenizer],
    encode: Callable[[bytes, str], str],
) -> None:
    shots = bank_shots(bank, 2, BASE, encode)
    with httpx.Client(base_url=limited, timeout=300) as session:
        response = session.post(
            "/v1/audio/transcriptions",
            files={"file": ("clip.wav", clip.read_bytes(), "audio/wav")},
            data={"prompt": "Names:\nAda  Lovelace", "max_tokens": "8", "temperature": "0"},
        )
        assert response.status_code == 200, response.text
        query = encode(clip.read_bytes(), BASE)
        asr = asr_prompt([(tokens, text) for text, tokens in shots], query)
        expected = tokenizers[BASE].encode("[Text]Names: Ada Lovelace\n" + asr)
        assert response.json()["usage"]["input_tokens"] == len(expected)

        events = sse_events(session, speech_body(stream_format="sse", response_format="pcm"))
        tts = tts_prompt(shots, "hello there")
        assert events[-1]["usage"]["input_tokens"] == len(tokenizers[BASE].encode(tts))


# ---- classification -------------------------------------------------------------------------


def reference_logprob(layout: CheckpointLayout, prompt_ids: list[int], ids: list[int]) -> float:
    """transformers (float32): log P(ids[len(prompt_ids):] | prompt), summed over tokens."""
    import torch

    from tests.support.lm_reference import reference_model

    model = reference_model(layout.lm_dir(BASE))
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[p - 1, ids[p]]) for p in range(len(prompt_ids), len(ids)))


def classify(url: str, clip: Path, labels: list[str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/audio/classifications",
        files={"file": ("clip.wav", clip.read_bytes(), "audio/wav")},
        data={"labels": labels} if labels is not None else {},
        timeout=300,
    )


def test_classification_picks_the_most_likely_bank_label(
    limited: str,
    clip: Path,
    classes: Path,
    layout: CheckpointLayout,
    tokenizers: dict[str, SpiritTokenizer],
    encode: Callable[[bytes, str], str],
) -> None:
    response = classify(limited, clip)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["shots"] == len(CLASS_LABELS)  # every exemplar of the bank is a shot
    shots = bank_shots(classes, len(CLASS_LABELS), BASE, encode)
    prompt = classification_prompt(
        [(tokens, label) for label, tokens in shots], encode(clip.read_bytes(), BASE)
    )
    tokenizer = tokenizers[BASE]
    prompt_ids = tokenizer.encode(prompt)
    assert result["usage"]["prompt_tokens"] == len(prompt_ids)
    expected = {
        label: reference_logprob(layout, prompt_ids, tokenizer.encode(prompt + label + "\n"))
        for label in dict.fromkeys(CLASS_LABELS)
    }
    scores = {score["label"]: score for score in result["scores"]}
    assert list(scores) == sorted(expected, key=lambda label: -expected[label])
    for label, logprob in expected.items():
        assert scores[label]["logprob"] == pytest.approx(logprob, abs=2e-3)
    assert result["label"] == max(expected, key=expected.get)
    assert sum(score["probability"] for score in result["scores"]) == pytest.approx(1.0)


def test_zero_shot_classification_takes_the_request_labels(gateway: str, clip: Path) -> None:
    refused = classify(gateway, clip)  # this gateway has no classification bank
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "labels"
    response = classify(gateway, clip, ["yes", "no", "yes", "maybe so"])
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["shots"] == 0
    assert sorted(score["label"] for score in result["scores"]) == ["maybe so", "no", "yes"]
    assert result["label"] == result["scores"][0]["label"]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["yes", "[Speech]"], "labels[1] contains the control token [Speech]"),
        (["yes", "[Hu12] no"], "labels[1] contains the speech token [Hu12]"),
        (["yes", "   "], "labels[1] is empty"),
        (["yes", "a\nb"], "labels[1] must be one line"),
        (["yes ", "no"], "labels[0] must be one line"),
        (["x" * 201], "labels[0]: 201 characters exceed the limit of 200"),
        ([f"label {i}" for i in range(33)], "33 distinct labels exceed the limit of 32"),
    ],
)
def test_bad_labels_are_named(gateway: str, clip: Path, labels: list[str], message: str) -> None:
    response = classify(gateway, clip, labels)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


# ---- speech ---------------------------------------------------------------------------------


def sse_events(session: httpx.Client, body: dict) -> list[dict]:
    with session.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    return [json.loads(line[len("data: ") :]) for line in lines]


def test_speech_in_every_format(client: openai.OpenAI, reference_pcm: bytes) -> None:
    samples = pcm_ints(reference_pcm)
    assert len(samples) > 0 and np.abs(samples).max() > 100
    seconds = len(samples) / 24000
    for fmt, media in [
        ("wav", "audio/wav"),
        ("flac", "audio/flac"),
        ("mp3", "audio/mpeg"),
        ("opus", "audio/ogg"),
        ("aac", "audio/aac"),
    ]:
        response = client.audio.speech.create(
            model="tts-1",
            voice="alloy",
            input="hello there",
            response_format=fmt,
            extra_body={"seed": SEED, "max_tokens": TTS_TOKENS},
        )
        data = response.content
        assert response.response.headers["content-type"] == media
        if fmt == "wav":
            wav, rate = soundfile.read(io.BytesIO(data), dtype="int16")
            assert rate == 24000
            assert_samples_close(wav, samples)
        elif fmt == "flac":
            assert_samples_close(decoded_ints(data), samples)
        else:
            audio = decode_audio(data)
            assert len(audio) / 16000 == pytest.approx(seconds, abs=0.15), fmt
            assert np.sqrt(np.mean(audio**2)) > 0.005, fmt


def test_speech_sse_events_carry_the_same_audio(http: httpx.Client, reference_pcm: bytes) -> None:
    # Voice "2" is the speaker that OpenAI's names (the reference used "alloy") stand for.
    events = sse_events(http, speech_body(voice="2", response_format="pcm", stream_format="sse"))
    *deltas, done = events
    assert deltas and all(event["type"] == "speech.audio.delta" for event in deltas)
    streamed = b"".join(base64.b64decode(event["audio"]) for event in deltas)
    assert_pcm16_close(streamed, reference_pcm)
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert 0 < usage["output_tokens"] <= TTS_TOKENS
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_voices_by_index_and_name(
    http: httpx.Client, layout: CheckpointLayout, reference_pcm: bytes
) -> None:
    listing = http.get("/v1/audio/voices").json()
    names = (layout.vocoder_dir(BASE) / "speakers.txt").read_text().split()
    assert [voice["id"] for voice in listing["data"]] == [str(i) for i in range(len(names))]
    assert [voice["name"] for voice in listing["data"]] == names
    assert listing["default"] == "2" and "alloy" in listing["data"][2]["aliases"]
    by_index = http.post("/v1/audio/speech", json=speech_body(voice="0", response_format="pcm"))
    by_name = http.post(
        "/v1/audio/speech", json=speech_body(voice=names[0].upper(), response_format="pcm")
    )
    assert by_index.status_code == by_name.status_code == 200
    assert_pcm16_close(by_index.content, by_name.content)
    assert by_index.content != reference_pcm  # another speaker embedding, another waveform


def test_speech_is_the_vocoded_few_shot_tts_answer(
    http: httpx.Client, layout: CheckpointLayout, encode: Callable[[bytes, str], str]
) -> None:
    """Greedy speech = /v1/generate on the documented prompt, vocoded by /v1/speech/detokenize."""
    shots = bank_shots(embedded_bank(layout), 3, BASE, encode)
    tokens = generated_tokens(http, tts_prompt(shots, "good morning"), "speech", TTS_TOKENS)
    body = {
        "input": "good morning",
        "voice": "1",
        "temperature": 0,
        "max_tokens": TTS_TOKENS,
        "response_format": "pcm",
        "sample_rate": 16000,
    }
    spoken = http.post("/v1/audio/speech", json=body)
    vocoded = http.post(
        "/v1/speech/detokenize",
        json={"tokens": tokens, "speaker": 1, "response_format": "pcm"},
    )
    assert spoken.status_code == vocoded.status_code == 200
    # The streaming vocoder equals one-shot synthesis up to float rounding.
    assert len(spoken.content) == len(vocoded.content)
    assert np.abs(pcm_ints(spoken.content) - pcm_ints(vocoded.content)).max() <= 2


# ---- tokenize / detokenize ------------------------------------------------------------------


def test_tokenize_equals_the_cli(
    http: httpx.Client, speech_file: Path, child_env: dict[str, str], layout: CheckpointLayout
) -> None:
    command = [sys.executable, "-m", "service", "tokenize", "--json", "--model", BASE]
    command += ["--checkpoints", str(layout.root), str(speech_file)]
    cli = json.loads(subprocess.run(command, env=child_env, capture_output=True, check=True).stdout)
    response = http.post(
        "/v1/speech/tokenize",
        files={"file": (speech_file.name, speech_file.read_bytes())},
        data={"model": BASE},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model"] == BASE
    assert (result["units"], result["tokens"]) == (cli["units"], cli["tokens"])
    assert result["seconds"] == pytest.approx(soundfile.info(speech_file).duration)


def test_tokenize_raw_body_expressive(
    http: httpx.Client, clip: Path, layout: CheckpointLayout
) -> None:
    response = http.post(
        "/v1/speech/tokenize",
        params={"model": EXPRESSIVE},
        content=clip.read_bytes(),
        headers={"content-type": "audio/wav"},
    )
    assert response.status_code == 200, response.text
    units = SpeechStack(layout, EXPRESSIVE).encode_units(load_audio_file(clip))
    assert response.json()["units"] == units.to_dict()
    assert response.json()["tokens"] == units_to_string(units, expressive=True)


@pytest.mark.parametrize("model", [BASE, EXPRESSIVE])
def test_detokenize_equals_in_process_synthesis(
    http: httpx.Client, clip: Path, layout: CheckpointLayout, model: str
) -> None:
    stack = SpeechStack(layout, model)
    units = stack.encode_units(load_audio_file(clip))
    tokens = units_to_string(units, expressive=stack.expressive)
    cases = [
        ({"tokens": tokens, "speaker": 1}, stack.decode(tokens, speaker=1)),
        (
            {"units": units.to_dict(), "speaker": 3, "duration_prediction": False},
            stack.decode(units, speaker=3, dur_pred=False),
        ),
    ]
    for body, expected in cases:
        response = http.post("/v1/speech/detokenize", json={"model": model, **body})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "audio/wav"
        wav, rate = soundfile.read(io.BytesIO(response.content), dtype="int16")
        assert rate == 16000
        reference = np.clip(np.rint(np.clip(expected, -1, 1) * 32768), -32768, 32767)
        assert wav.shape == reference.shape
        assert np.abs(wav.astype(np.int64) - reference.astype(np.int64)).max() <= 1


def test_detokenize_cli_parity(
    http: httpx.Client,
    clip: Path,
    child_env: dict[str, str],
    layout: CheckpointLayout,
    tmp_path: Path,
) -> None:
    tokens = http.post(
        "/v1/speech/tokenize", content=clip.read_bytes(), headers={"content-type": "audio/wav"}
    ).json()["tokens"]
    output = tmp_path / "cli.wav"
    command = [sys.executable, "-m", "service", "synthesize", "--model", BASE, "--speaker", "0"]
    command += ["--checkpoints", str(layout.root), "--tokens", tokens, "-o", str(output)]
    subprocess.run(command, env=child_env, capture_output=True, check=True)
    response = http.post("/v1/speech/detokenize", json={"tokens": tokens, "speaker": "0"})
    served, _ = soundfile.read(io.BytesIO(response.content), dtype="float32")
    written, _ = soundfile.read(output, dtype="float32")
    assert served.shape == written.shape
    # soundfile and our encoder scale floats to int16 by 32767 vs 32768: one step apart at most.
    assert np.abs(served - written).max() <= 2 / 32768


# ---- expressive -----------------------------------------------------------------------------


def test_expressive_style_reaches_prompt_and_vocoder(
    servers,  # noqa: ANN001
    layout: CheckpointLayout,
    clip: Path,
    tokenizers: dict[str, SpiritTokenizer],
    encode: Callable[[bytes, str], str],
) -> None:
    with httpx.Client(base_url=servers.gateway(EXPRESSIVE), timeout=300) as session:
        shots = bank_shots(embedded_bank(layout), 3, EXPRESSIVE, encode)
        prompt = tts_prompt(shots, "good morning") + "[St5]"
        tokens = generated_tokens(session, prompt, "speech", TTS_TOKENS)
        body = {
            "model": EXPRESSIVE,
            "input": "good morning",
            "style": 5,
            "temperature": 0,
            "max_tokens": TTS_TOKENS,
            "response_format": "pcm",
            "sample_rate": 16000,
        }
        spoken = session.post("/v1/audio/speech", json=body)
        vocoded = session.post(
            "/v1/speech/detokenize",
            json={"model": EXPRESSIVE, "tokens": "[St5]" + tokens, "response_format": "pcm"},
        )
        assert spoken.status_code == vocoded.status_code == 200, spoken.text
        assert len(spoken.content) == len(vocoded.content) > 0
        assert np.abs(pcm_ints(spoken.content) - pcm_ints(vocoded.content)).max() <= 2

        too_far = session.post("/v1/audio/speech", json={**body, "style": 100})
        assert too_far.status_code == 400 and "style 100" in too_far.json()["error"]["message"]

        transcript = session.post(
            "/v1/audio/transcriptions",
            files={"file": ("clip.wav", clip.read_bytes())},
            data={"model": EXPRESSIVE, "max_tokens": "4"},
        )
        assert transcript.status_code == 200, transcript.text
        query = encode(clip.read_bytes(), EXPRESSIVE)
        asr = asr_prompt([(t, text) for text, t in shots], query)
        usage = transcript.json()["usage"]
        assert usage["input_tokens"] == len(tokenizers[EXPRESSIVE].encode(asr))
        assert 0 < usage["output_tokens"] <= 4


# ---- bad input ------------------------------------------------------------------------------

AUDIO = "/v1/audio/transcriptions"
SPEECH = "/v1/audio/speech"


def bad_cases(flac: bytes) -> list[tuple[str, str, str, dict, int, str]]:
    """(id, gateway, path, request, status, message part); gateway "limited" has small limits."""
    wav_file = {"file": ("a.wav", b"")}
    garbage = {"file": ("noise.wav", b"definitely not audio" * 50)}
    return [
        ("asr-json-body", "main", AUDIO, {"json": {"model": "whisper-1"}}, 415, "multipart"),
        ("asr-no-file", "main", AUDIO, {"files": {"other": ("x", b"1")}}, 422, "file"),
        ("asr-empty", "main", AUDIO, {"files": wav_file}, 400, "audio is empty"),
        ("asr-corrupt", "main", AUDIO, {"files": garbage}, 400, "could not decode audio"),
        ("asr-too-long", "limited", AUDIO, {"files": {"file": ("s.flac", flac)}}, 400, "too long"),
        (
            "asr-body-limit",
            "limited",
            AUDIO,
            {"files": {"file": ("big.wav", bytes(400_000))}},
            413,
            "exceeds the limit",
        ),
        (
            "asr-unknown-model",
            "main",
            AUDIO,
            {"files": {"file": ("s.flac", flac)}, "data": {"model": "spirit-lm-nope"}},
            404,
            "'spirit-lm-nope' does not exist",
        ),
        (
            "asr-unserved-model",
            "main",
            AUDIO,
            {"files": {"file": ("s.flac", flac)}, "data": {"model": EXPRESSIVE}},
            404,
            "not served",
        ),
        (
            "asr-bad-format",
            "main",
            AUDIO,
            {"files": {"file": ("s.flac", flac)}, "data": {"response_format": "docx"}},
            422,
            "response_format",
        ),
        (
            "asr-huge-max-tokens",
            "main",
            AUDIO,
            {"files": {"file": ("s.flac", flac)}, "data": {"max_tokens": "99999999"}},
            400,
            "exceeds the limit",
        ),
        (
            "asr-stream-srt",
            "main",
            AUDIO,
            {
                "files": {"file": ("s.flac", flac)},
                "data": {"stream": "true", "response_format": "srt"},
            },
            400,
            "stream=true",
        ),
        (
            "asr-long-prompt",
            "limited",
            AUDIO,
            {"files": {"file": ("s.flac", flac[:1000])}, "data": {"prompt": "p" * 65}},
            400,
            "65 characters exceed the limit of 64",
        ),
        ("tts-form-body", "main", SPEECH, {"data": {"input": "hi"}}, 415, "application/json"),
        (
            "tts-invalid-json",
            "main",
            SPEECH,
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        ("tts-no-input", "main", SPEECH, {"json": {"voice": "alloy"}}, 422, "input"),
        ("tts-blank-input", "main", SPEECH, {"json": {"input": " \n "}}, 400, "input is empty"),
        (
            "tts-long-input",
            "limited",
            SPEECH,
            {"json": {"input": "y" * 65}},
            400,
            "exceed the limit",
        ),
        ("tts-control-token", "main", SPEECH, {"json": {"input": "a [Hu12]"}}, 400, "[Hu12]"),
        (
            "tts-unknown-voice",
            "main",
            SPEECH,
            {"json": {"input": "hi", "voice": "nobody"}},
            400,
            "voice 'nobody'",
        ),
        (
            "tts-unknown-voice-id",
            "main",
            SPEECH,
            {"json": {"input": "hi", "voice": {"id": "voice_1234"}}},
            400,
            "voice 'voice_1234'",
        ),
        (
            "tts-bad-format",
            "main",
            SPEECH,
            {"json": {"input": "hi", "response_format": "wma"}},
            422,
            "response_format",
        ),
        ("tts-speed", "main", SPEECH, {"json": {"input": "hi", "speed": 1.5}}, 400, "speed 1.5"),
        ("tts-speed-range", "main", SPEECH, {"json": {"input": "hi", "speed": 9}}, 422, "speed"),
        (
            "tts-instructions",
            "main",
            SPEECH,
            {"json": {"input": "hi", "instructions": "cheerful"}},
            400,
            "instructions",
        ),
        ("tts-style-on-base", "main", SPEECH, {"json": {"input": "hi", "style": 3}}, 400, "style"),
        (
            "tts-huge-max-tokens",
            "main",
            SPEECH,
            {"json": {"input": "hi", "max_tokens": 10**9}},
            400,
            "exceeds the limit",
        ),
        (
            "tts-sample-rate",
            "main",
            SPEECH,
            {"json": {"input": "hi", "sample_rate": 12345}},
            400,
            "sample_rate 12345",
        ),
        (
            "tts-opus-rate",
            "main",
            SPEECH,
            {"json": {"input": "hi", "response_format": "opus", "sample_rate": 22050}},
            400,
            "opus cannot be encoded at 22050",
        ),
        (
            "tts-opus-44100",
            "main",
            SPEECH,
            {"json": {"input": "hi", "response_format": "opus", "sample_rate": 44100}},
            400,
            "sample_rate must be one of 8000, 16000, 24000, 48000",
        ),
        (
            "tts-unknown-model",
            "main",
            SPEECH,
            {"json": {"input": "hi", "model": "spirit-lm-nope"}},
            404,
            "does not exist",
        ),
        (
            "tokenize-text-body",
            "main",
            "/v1/speech/tokenize",
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            415,
            "Content-Type",
        ),
        (
            "tokenize-empty",
            "main",
            "/v1/speech/tokenize",
            {"content": b"", "headers": {"content-type": "audio/wav"}},
            400,
            "audio is empty",
        ),
        (
            "tokenize-unknown-model",
            "main",
            "/v1/speech/tokenize?model=spirit-lm-nope",
            {"content": flac, "headers": {"content-type": "audio/flac"}},
            404,
            "does not exist",
        ),
        ("detokenize-nothing", "main", "/v1/speech/detokenize", {"json": {}}, 400, "exactly one"),
        (
            "detokenize-out-of-range",
            "main",
            "/v1/speech/detokenize",
            {"json": {"tokens": "[Hu99999]"}},
            400,
            "out of range",
        ),
        (
            "detokenize-no-units",
            "main",
            "/v1/speech/detokenize",
            {"json": {"tokens": "hello"}},
            400,
            "no HuBERT units",
        ),
        (
            "detokenize-bad-units",
            "main",
            "/v1/speech/detokenize",
            {"json": {"units": {"hubert": "1 2 x"}}},
            400,
            "'x' is not an integer",
        ),
        (
            "detokenize-unknown-speaker",
            "main",
            "/v1/speech/detokenize",
            {"json": {"tokens": "[Hu1][Hu2]", "speaker": 9}},
            400,
            "speaker '9'",
        ),
        (
            "detokenize-sample-rate",
            "main",
            "/v1/speech/detokenize",
            {"json": {"tokens": "[Hu1][Hu2]", "sample_rate": 1}},
            400,
            "sample_rate 1",
        ),
        (
            "detokenize-opus-44100",
            "main",
            "/v1/speech/detokenize",
            {"json": {"tokens": "[Hu1][Hu2]", "response_format": "opus", "sample_rate": 44100}},
            400,
            "opus cannot be encoded at 44100 Hz",
        ),
    ]


CASE_IDS = [case[0] for case in bad_cases(b"")]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_is_a_4xx_naming_the_problem(
    case_id: str, gateway: str, limited: str, speech_file: Path
) -> None:
    [case] = [case for case in bad_cases(speech_file.read_bytes()) if case[0] == case_id]
    _, which, path, request, status, part = case
    base = limited if which == "limited" else gateway
    response = httpx.post(base + path, timeout=300, **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert part in error["message"]
    assert error["type"] in ("invalid_request_error", "not_found_error")


def test_sdk_raises_the_openai_error_types(client: openai.OpenAI, clip: Path) -> None:
    with pytest.raises(openai.BadRequestError, match="voice 'nobody'"):
        client.audio.speech.create(model="tts-1", voice="nobody", input="hi")
    with pytest.raises(openai.NotFoundError, match="spirit-lm-nope"):
        client.audio.transcriptions.create(model="spirit-lm-nope", file=clip.open("rb"))
    with pytest.raises(openai.NotFoundError, match="spirit-lm-nope"):
        client.get("/audio/voices", cast_to=object, options={"params": {"model": "spirit-lm-nope"}})


def test_workers_are_healthy_afterwards(servers, gateway: str, clip: Path) -> None:  # noqa: ANN001
    assert httpx.get(servers.speech() + "/ready", timeout=10).status_code == 200
    assert httpx.get(servers.lm() + "/health", timeout=10).status_code == 200
    assert httpx.get(gateway + "/ready", timeout=10).status_code == 200
    response = httpx.post(
        gateway + "/v1/speech/tokenize",
        content=clip.read_bytes(),
        headers={"content-type": "audio/wav"},
        timeout=300,
    )
    assert response.status_code == 200


# ---- exemplar banks (no servers needed) -----------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ([], "has no exemplars"),
        (['{"audio": "0.flac", "text": "ok"}', "{not json"], "line 2: not valid JSON"),
        (['{"audio": "/etc/passwd", "text": "x"}'], "line 1: 'audio' must be a relative"),
        (['{"audio": "missing.wav", "text": "x"}'], "missing.wav does not exist"),
        (['{"audio": "0.flac", "text": "two\\nlines"}'], "line 1: 'text' must not contain"),
        (['{"audio": "0.flac", "text": "  "}'], "line 1: 'text' must be a non-empty"),
    ],
)
def test_bad_manifest_is_refused_naming_the_line(
    tmp_path: Path, bank: Path, lines: list[str], problem: str
) -> None:
    (tmp_path / "0.flac").write_bytes((bank / "0.flac").read_bytes())
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckpointError, match="manifest.jsonl") as raised:
        ExemplarBank.from_dir(tmp_path, 3)
    assert problem in str(raised.value)


def test_gateway_with_a_bad_bank_does_not_start(tmp_path: Path, child_env: dict[str, str]) -> None:
    (tmp_path / "manifest.jsonl").write_text('{"audio": "gone.wav", "text": "x"}\n')
    command = [sys.executable, "-m", "service", "gateway", "--port", str(free_port())]
    command += ["--lm-url", "http://127.0.0.1:9", "--speech-url", "http://127.0.0.1:9"]
    env = {**child_env, "SPIRITLM_FEWSHOT_DIR": str(tmp_path)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "gone.wav does not exist" in result.stderr


def test_up_passes_gateway_flags_to_the_gateway() -> None:
    from service.cli import build_parser
    from service.commands.up import given_gateway_env

    args = build_parser().parse_args(
        ["up", "--fewshot-dir", "/banks/en", "--fewshot-shots", "5", "--port", "9000"]
    )
    env = given_gateway_env(args)
    assert env["SPIRITLM_FEWSHOT_DIR"] == "/banks/en"
    assert env["SPIRITLM_FEWSHOT_SHOTS"] == "5"
    assert "SPIRITLM_PORT" not in env  # passed as a flag of the gateway command instead


def test_up_runs_its_gateway_with_the_flags_it_was_given(servers, tmp_path: Path) -> None:  # noqa: ANN001
    """`up --api-keys` must reach the gateway child: a gateway without them would be open."""
    from service.process import ChildProcess

    port, lm_port, speech_port = free_port(), free_port(), free_port()
    argv = [sys.executable, "-m", "service", "up", "--port", str(port), "--api-keys", "k1"]
    argv += ["--lm-port", str(lm_port), "--speech-port", str(speech_port)]
    argv += ["--log-dir", str(tmp_path / "logs")]
    url = f"http://127.0.0.1:{port}"
    stack = ChildProcess("up", argv, url + "/ready", env=servers.env)
    stack.start()
    try:
        stack.wait_healthy(600)
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
        authorized = {"Authorization": "Bearer k1"}
        assert httpx.get(url + "/v1/models", headers=authorized, timeout=10).status_code == 200
    finally:
        stack.stop()


# ---- transcription logprobs -----------------------------------------------------------------


def test_transcription_logprobs_are_the_lm_workers(
    servers,  # noqa: ANN001
    client: openai.OpenAI,
    clip: Path,
    layout: CheckpointLayout,
    tokenizers: dict[str, SpiritTokenizer],
    encode: Callable[[bytes, str], str],
) -> None:
    """`include[]=logprobs` and verbose_json's `avg_logprob` are vLLM's logprobs of the
    transcript's tokens: the same values vLLM gives those tokens scored after the prompt."""
    asr = {"file": clip.open("rb"), "temperature": 0, "extra_body": {"max_tokens": ASR_TOKENS}}
    result = client.audio.transcriptions.create(model="whisper-1", include=["logprobs"], **asr)
    asr["file"] = clip.open("rb")
    verbose = client.audio.transcriptions.create(
        model="whisper-1", response_format="verbose_json", **asr
    )
    [segment] = verbose.segments
    logprobs = result.logprobs
    assert logprobs and len(logprobs) == len(segment.tokens)
    values = [entry.logprob for entry in logprobs]
    assert segment.avg_logprob == pytest.approx(sum(values) / len(values), abs=1e-9)
    assert "no_speech_prob" not in segment.model_dump(exclude_unset=True)
    # The bytes of the tokens are the transcript; each token's text is its bytes (the SDK
    # types this response's bytes as floats).
    data = [bytes(int(value) for value in entry.bytes) for entry in logprobs]
    assert b"".join(data).decode().strip() == result.text
    for entry, token_bytes in zip(logprobs, data, strict=True):
        assert entry.token == token_bytes.decode(errors="replace")
    # Scored again by vLLM after the same prompt (prompt_logprobs, one prefill): same values.
    shots = bank_shots(embedded_bank(layout), 3, BASE, encode)
    prompt = asr_prompt([(tokens, text) for text, tokens in shots], encode(clip.read_bytes(), BASE))
    prompt_ids = tokenizers[BASE].encode(prompt)

    async def score() -> list[float | None]:
        lm = LMClient(servers.lm(BASE), BASE)
        try:
            return await lm.prompt_logprobs([*prompt_ids, *segment.tokens])
        finally:
            await lm.aclose()

    scored = asyncio.run(score())[len(prompt_ids) :]
    assert values == pytest.approx(scored, abs=1e-5)  # a shift by one token is ~1e-2 off
