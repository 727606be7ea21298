"""The Python SDK (`spiritlm_client`) and the `spiritlm` CLI against a real gateway."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import soundfile
import spiritlm_client
from spiritlm_client import (
    AsyncSpiritLM,
    ChatReply,
    SpiritLM,
    SpiritLMConnectionError,
    SpiritLMError,
    user_audio_message,
)

from service.checkpoints.layout import BASE
from tests.support.pcm import assert_pcm16_close, assert_wav_close

pytestmark = pytest.mark.slow

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def gateway(servers) -> str:  # noqa: ANN001
    return servers.gateway(BASE)


@pytest.fixture(scope="module")
def client(gateway: str) -> SpiritLM:
    with SpiritLM(gateway, timeout=120) as sdk:
        yield sdk


def audio_length(data: bytes) -> tuple[int, int]:
    samples, rate = soundfile.read(io.BytesIO(data))
    return len(samples), rate


# ---- SDK --------------------------------------------------------------------------------------


def test_status_calls(client: SpiritLM) -> None:
    assert client.health()
    assert BASE in client.models()
    assert client.ready()["status"] == "ready"


def test_tokenize_and_detokenize(client: SpiritLM, servers, speech_file: Path) -> None:  # noqa: ANN001
    result = client.tokenize(speech_file)
    worker = httpx.post(
        servers.speech() + "/v1/encode",
        params={"model": BASE},
        content=speech_file.read_bytes(),
        timeout=120,
    ).json()
    assert result.tokens == worker["tokens"]
    assert result.model == BASE
    assert result.seconds == pytest.approx(146160 / 16000, abs=0.01)
    for source, speaker in ((result.tokens, 1), (result.units, "1")):
        audio = client.detokenize(source, speaker=speaker)
        samples, rate = audio_length(audio)
        assert rate == 16000 and samples > 0
        # What the speech worker itself makes of the same input.
        key = "tokens" if isinstance(source, str) else "units"
        direct = httpx.post(
            servers.speech() + "/v1/decode",
            json={"model": BASE, key: source, "speaker": 1, "format": "wav"},
            timeout=120,
        )
        assert direct.status_code == 200, direct.text
        assert audio == direct.content


def test_transcribe_matches_the_http_api(client: SpiritLM, gateway: str, speech_file: Path) -> None:
    text = client.transcribe(speech_file, temperature=0)
    raw = httpx.post(
        gateway + "/v1/audio/transcriptions",
        files={"file": (speech_file.name, speech_file.read_bytes())},
        data={"temperature": "0"},
        timeout=120,
    )
    assert raw.status_code == 200, raw.text
    assert text == raw.json()["text"]
    with speech_file.open("rb") as handle:
        assert client.transcribe(handle, response_format="text").strip() == text.strip()


def test_classify_matches_the_http_api(client: SpiritLM, gateway: str, speech_file: Path) -> None:
    result = client.classify(speech_file, ["yes", "no", "maybe"])
    raw = httpx.post(
        gateway + "/v1/audio/classifications",
        files={"file": (speech_file.name, speech_file.read_bytes())},
        data={"labels": ["yes", "no", "maybe"]},
        timeout=120,
    )
    assert raw.status_code == 200, raw.text
    payload = raw.json()
    assert result.label == payload["label"] == result.scores[0][0]
    assert result.scores == [
        (s["label"], s["logprob"], s["probability"]) for s in payload["scores"]
    ]
    assert result.shots == 0  # this gateway has no classification bank


def test_cli_classify(gateway: str, client: SpiritLM, speech_file: Path) -> None:
    labels = ["--label", "yes", "--label", "no"]
    done = cli("--base-url", gateway, "classify", str(speech_file), *labels, "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    expected = client.classify(speech_file, ["yes", "no"])
    assert record["label"] == expected.label
    assert [score["label"] for score in record["scores"]] == [s[0] for s in expected.scores]
    refused = cli("--base-url", gateway, "classify", str(speech_file))  # no bank, no labels
    assert refused.returncode != 0
    assert "labels" in refused.stderr


def test_speak_and_iter_speak(client: SpiritLM) -> None:
    whole = client.speak("hello there", voice="1", format="wav", temperature=0)
    pieces = list(client.iter_speak("hello there", voice="1", format="wav", temperature=0))
    assert_wav_close(b"".join(pieces), whole)
    samples, rate = audio_length(whole)
    assert rate == 24000 and samples > 0


def test_generate_and_its_events(client: SpiritLM, speech_file: Path) -> None:
    inputs = ["Hello", ("speech", speech_file)]
    options = {"output_modality": "speech", "max_tokens": 30, "temperature": 0}
    result = client.generate(inputs, **options)
    assert result.prompt.startswith("[Text]Hello[Speech][Hu")
    assert len(result.output_token_ids) == 30
    [segment] = result.segments
    assert segment.type == "speech" and segment.format == "wav"
    samples, _ = audio_length(segment.audio)
    events = list(client.iter_generate(inputs, **options))
    assert [e.type for e in events][0] == "segment.start"
    assert events[-1].type == "done"
    assert events[-1].generation.output_token_ids == result.output_token_ids
    assert "".join(e.tokens for e in events if e.type == "speech.tokens") == segment.tokens
    pcm = b"".join(e.audio for e in events if e.type == "audio.delta")
    assert len(pcm) == 2 * samples


def test_chat_text_audio_and_history(client: SpiritLM, speech_file: Path) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    reply = client.chat(messages, max_tokens=8, temperature=0)
    assert isinstance(reply.text, str) and reply.audio is None
    streamed = ChatReply.from_deltas(client.iter_chat(messages, max_tokens=8, temperature=0))
    assert streamed.text == reply.text
    assert streamed.usage == reply.usage
    assert streamed.finish_reason == reply.finish_reason

    question = user_audio_message(speech_file, "Repeat:")
    spoken = client.chat([question], audio=True, voice="2", max_tokens=30, temperature=0)
    assert spoken.text is None and spoken.audio_id.startswith("audio_")
    samples, rate = audio_length(spoken.audio)
    assert rate == 24000 and samples > 0
    assert spoken.as_message() == {"role": "assistant", "audio": {"id": spoken.audio_id}}
    follow = client.chat(
        [question, spoken.as_message(), {"role": "user", "content": "again"}], max_tokens=4
    )
    # The history holds the 30 generated speech tokens (one id each) after the first prompt.
    grown = spoken.usage["prompt_tokens"] + spoken.usage["completion_tokens"]
    assert follow.usage["prompt_tokens"] > grown

    streamed_audio = ChatReply.from_deltas(
        client.iter_chat([question], audio=True, voice="2", max_tokens=30, temperature=0)
    )
    assert streamed_audio.text is None and streamed_audio.audio_id.startswith("audio_")
    assert len(streamed_audio.audio) == 2 * samples  # pcm16 at the same 24 kHz


def test_async_client(gateway: str, speech_file: Path) -> None:
    async def scenario() -> None:
        async with AsyncSpiritLM(gateway, timeout=120) as sdk:
            assert await sdk.health()
            assert BASE in await sdk.models()
            options = {"output_modality": "text", "max_tokens": 8, "temperature": 0}
            result = await sdk.generate(["Once upon"], **options)
            events = [event async for event in sdk.iter_generate(["Once upon"], **options)]
            assert "".join(e.text for e in events if e.type == "text.delta") == result.text
            chat = [{"role": "user", "content": "Hello"}]
            reply = await sdk.chat(chat, max_tokens=6, temperature=0)
            deltas = [delta async for delta in sdk.iter_chat(chat, max_tokens=6, temperature=0)]
            assert ChatReply.from_deltas(deltas).text == reply.text
            audio = await sdk.speak("hi", temperature=0, format="pcm")
            chunks = [chunk async for chunk in sdk.iter_speak("hi", temperature=0, format="pcm")]
            assert_pcm16_close(b"".join(chunks), audio)
            tokens = await sdk.tokenize(speech_file.read_bytes())
            assert tokens.tokens.startswith("[Hu")
            assert await sdk.detokenize(tokens.tokens, format="pcm")
            with pytest.raises(SpiritLMError) as error:
                await sdk.generate(["x"], max_tokens=99999)
            assert (error.value.status, error.value.param) == (400, "max_tokens")

    asyncio.run(scenario())


def test_errors_carry_status_and_field(client: SpiritLM) -> None:
    with pytest.raises(SpiritLMError) as error:
        client.generate([("tokens", "no units")], max_tokens=5)
    assert error.value.status == 400 and error.value.param == "inputs[0].tokens"
    with pytest.raises(SpiritLMError) as voice:
        client.speak("hi", voice="nobody")
    assert voice.value.status == 400 and voice.value.param == "voice"
    with pytest.raises(SpiritLMError) as n:
        client.chat([{"role": "user", "content": "hi"}], n=2)
    assert n.value.param == "n"
    offline = SpiritLM(UNREACHABLE, timeout=5)
    assert not offline.health()
    with pytest.raises(SpiritLMConnectionError):
        offline.models()


def test_api_key_from_argument_and_environment(servers, monkeypatch) -> None:  # noqa: ANN001
    url = servers.gateway(BASE, "--api-keys", "k1", name="auth")
    with SpiritLM(url, api_key="k1") as sdk:
        assert BASE in sdk.models()
    with SpiritLM(url, api_key="wrong") as sdk, pytest.raises(SpiritLMError) as error:
        sdk.models()
    assert error.value.status == 401
    monkeypatch.setenv("SPIRITLM_API_KEY", "k1")
    monkeypatch.setenv("SPIRITLM_BASE_URL", url)
    with SpiritLM() as sdk:
        assert sdk.base_url == url and BASE in sdk.models()


# ---- CLI --------------------------------------------------------------------------------------


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):  # noqa: ANN201
    """Run the `spiritlm` console script (or the module when the package is not installed)."""
    script = Path(sys.executable).with_name("spiritlm")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "spiritlm_client"]
    package_root = str(Path(spiritlm_client.__file__).resolve().parent.parent)
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        [package_root, *filter(None, [environment.get("PYTHONPATH")])]
    )
    if "SPIRITLM_API_KEY" not in (env or {}):
        environment.pop("SPIRITLM_API_KEY", None)
    return subprocess.run(
        [*command, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_cli_speak_writes_a_complete_wav(gateway: str, client: SpiritLM, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    args = ["speak", "hello there", "-o", str(out), "--voice", "1", "--temperature", "0"]
    done = cli("--base-url", gateway, *args)
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    again = client.speak("hello there", voice="1", temperature=0)
    assert_pcm16_close(data[44:], again[44:])  # the same greedy reply
    # The streamed header's unknown sizes were replaced by the real ones.
    assert struct.unpack("<I", data[40:44])[0] == len(data) - 44
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert "kB in" in done.stderr


def test_cli_transcribe_uses_the_environment_url(
    gateway: str, client: SpiritLM, speech_file: Path
) -> None:
    done = cli("transcribe", str(speech_file), env={"SPIRITLM_BASE_URL": gateway})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == client.transcribe(speech_file).strip()


def test_cli_generate(gateway: str, client: SpiritLM, speech_file: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "gen"
    inputs = ["--input", "text:Hello", "--input", f"speech:{speech_file}"]
    options = ["--max-tokens", "30", "--temperature", "0", "-o", str(prefix), "--json"]
    done = cli("--base-url", gateway, "generate", *inputs, "--output-modality", "speech", *options)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    expected = client.generate(
        ["Hello", ("speech", speech_file)], output_modality="speech", max_tokens=30, temperature=0
    )
    assert record["output_token_ids"] == expected.output_token_ids
    [segment] = record["segments"]
    assert_wav_close(Path(segment["audio"]).read_bytes(), expected.segments[0].audio)

    options = ["--output-modality", "text", "--max-tokens", "12", "--temperature", "0"]
    streamed = cli(
        "--base-url", gateway, "generate", "--input", "text:Once upon a time", *options, "--stream"
    )
    assert streamed.returncode == 0, streamed.stderr
    text = client.generate(
        ["Once upon a time"], output_modality="text", max_tokens=12, temperature=0
    ).text
    assert streamed.stdout.rstrip("\n") == text


def test_cli_chat_repl(gateway: str, client: SpiritLM, tmp_path: Path) -> None:
    options = ["--max-tokens", "8", "--temperature", "0"]
    done = cli("--base-url", gateway, "chat", *options, stdin="Hello\n/exit\nnot read\n")
    assert done.returncode == 0, done.stderr
    expected = client.chat([{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0)
    assert done.stdout == f"assistant> {expected.text}\n"

    replies = tmp_path / "replies"
    options = ["--audio-out", str(replies), "--max-tokens", "20", "--temperature", "0"]
    spoken = cli("--base-url", gateway, "chat", *options, stdin="Hi\nAgain\n")
    assert spoken.returncode == 0, spoken.stderr
    files = sorted(replies.glob("reply-*.wav"))
    assert [f.name for f in files] == ["reply-1.wav", "reply-2.wav"]
    for file in files:
        assert str(file) in spoken.stdout
        assert audio_length(file.read_bytes())[0] > 0


def test_cli_errors_and_api_key(servers, gateway: str) -> None:  # noqa: ANN001
    too_many = cli("--base-url", gateway, "generate", "--input", "text:x", "--max-tokens", "99999")
    assert too_many.returncode == 1
    assert "max_tokens" in too_many.stderr and "400" in too_many.stderr
    offline = cli("--base-url", UNREACHABLE, "models")
    assert offline.returncode == 1 and "cannot reach" in offline.stderr
    bad_input = cli("--base-url", gateway, "generate", "--input", "video:x")
    assert bad_input.returncode == 1 and "--input" in bad_input.stderr
    url = servers.gateway(BASE, "--api-keys", "k1", name="auth")
    assert cli("--base-url", url, "models").returncode == 1
    # The served model, then the OpenAI names it answers to (docs/audio-api.md, "Model names").
    served = cli("--base-url", url, "--api-key", "k1", "models").stdout.split()
    assert served[0] == BASE and "whisper-1" in served
    keyed = cli("--base-url", url, "models", env={"SPIRITLM_API_KEY": "k1"})
    assert keyed.stdout.split() == served
