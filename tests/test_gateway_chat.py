"""POST /v1/chat/completions through the official `openai` SDK, against the real LM worker
(vLLM), speech worker and gateway processes."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from service.checkpoints.layout import BASE, CheckpointLayout
from service.lm.stops import StopMatcher
from service.lm.tokenizer import SpiritTokenizer

pytestmark = pytest.mark.slow

SYSTEM = {"role": "system", "content": "Answer briefly."}


@pytest.fixture(scope="module")
def gateway(servers) -> str:  # noqa: ANN001
    return servers.gateway(BASE)


@pytest.fixture(scope="module")
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(layout: CheckpointLayout) -> SpiritTokenizer:
    return SpiritTokenizer.from_dir(layout.lm_dir(BASE))


@pytest.fixture(scope="module")
def wav_b64(speech_file: Path) -> str:
    """The test utterance as a WAV file (OpenAI's input_audio formats are wav and mp3)."""
    samples, rate = soundfile.read(speech_file, dtype="int16")
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def speech_tokens(servers, wav_b64: str) -> str:  # noqa: ANN001
    response = httpx.post(
        servers.speech() + "/v1/encode",
        params={"model": BASE},
        content=base64.b64decode(wav_b64),
        timeout=120.0,
    )
    response.raise_for_status()
    return response.json()["tokens"]


def generate(gateway: str, prompt: str, modality: str, max_tokens: int, **extra: object) -> dict:
    """The same prompt through /v1/generate (greedy): what the chat route must reproduce."""
    body = {
        "prompt": prompt,
        "output_modality": modality,
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
    response = httpx.post(gateway + "/v1/generate", json=body, timeout=120.0)
    assert response.status_code == 200, response.text
    return response.json()


def audio_part(data: str, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


# ---- text -------------------------------------------------------------------------------------


def test_text_chat(client: openai.OpenAI, gateway: str, tokenizer: SpiritTokenizer) -> None:
    messages = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
    completion = client.chat.completions.create(
        model=BASE, messages=messages, max_tokens=12, temperature=0
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == BASE
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.audio is None
    # The conversation is rendered as one text prompt, each turn ending with a newline.
    prompt = "[Text]Answer briefly.\nWhat is the capital of France?\n"
    assert completion.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert 1 <= completion.usage.completion_tokens <= 12
    expected = generate(gateway, prompt, "text", 12)
    assert choice.message.content == "".join(s["text"] for s in expected["segments"])
    assert completion.usage.completion_tokens == len(expected["output_token_ids"])
    assert choice.finish_reason == ("length" if expected["finish_reason"] == "length" else "stop")


def test_streamed_text_chat(client: openai.OpenAI) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Tell me a story."}]
    whole = client.chat.completions.create(
        model=BASE, messages=messages, max_tokens=20, temperature=0
    )
    stream = client.chat.completions.create(
        model=BASE,
        messages=messages,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_stop_strings_cut_the_text(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Count from one to twenty."}]
    full = client.chat.completions.create(
        model=BASE, messages=messages, max_tokens=30, temperature=0
    )
    text = full.choices[0].message.content
    assert len(text) >= 12, "the model should produce enough text to cut"
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    expected = text[: text.find(stop)]
    cut = client.chat.completions.create(
        model=BASE, messages=messages, max_tokens=30, temperature=0, stop=[stop, "\u2603\u2603"]
    )
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens
    streamed = client.chat.completions.create(
        model=BASE, messages=messages, max_tokens=30, temperature=0, stop=stop, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(pieces) == expected


# ---- audio ------------------------------------------------------------------------------------


def test_audio_in_audio_out_and_a_second_turn(
    client: openai.OpenAI,
    gateway: str,
    tokenizer: SpiritTokenizer,
    wav_b64: str,
    speech_tokens: str,
) -> None:
    user = {"role": "user", "content": [{"type": "text", "text": "Repeat:"}, audio_part(wav_b64)]}
    completion = client.chat.completions.create(
        model=BASE,
        messages=[user],
        modalities=["text", "audio"],
        audio={"voice": "ex03_default", "format": "wav"},
        max_tokens=40,
        temperature=0,
    )
    message = completion.choices[0].message
    assert message.content is None
    audio = message.audio
    assert audio.id.startswith("audio_")
    # The LM's transcript of its reply: one line (random weights: gibberish, but not nothing).
    assert audio.transcript and "\n" not in audio.transcript
    assert audio.expires_at > time.time() + 600
    wav, rate = soundfile.read(io.BytesIO(base64.b64decode(audio.data)))
    assert rate == 24000
    assert len(wav) > 0 and np.abs(wav).max() > 0
    # Every turn ends with a newline, so the reply starts a speech turn of its own.
    first_prompt = "[Text]Repeat:[Speech]" + speech_tokens + "\n[Speech]"
    assert completion.usage.prompt_tokens == len(tokenizer.encode(first_prompt))
    # The random LM does not end its turn: the reply runs to max_tokens and says so.
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 40
    same = generate(gateway, first_prompt, "speech", 40, end_of_turn=True)
    assert same["end"] == "max_tokens"
    generated = same["segments"][0]["tokens"]

    # Second turn: the assistant's audio is referenced by id and rebuilt from its tokens.
    history = [user, {"role": "assistant", "audio": {"id": audio.id}}]
    follow_up = client.chat.completions.create(
        model=BASE,
        messages=[*history, {"role": "user", "content": "Once more, in text."}],
        max_tokens=5,
        temperature=0,
    )
    second_prompt = first_prompt + generated + "\n[Text]Once more, in text.\n"
    assert follow_up.usage.prompt_tokens == len(tokenizer.encode(second_prompt))
    assert isinstance(follow_up.choices[0].message.content, str)

    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(
            model=BASE,
            messages=[user, {"role": "assistant", "audio": {"id": "audio_nope"}}],
            max_tokens=5,
        )
    assert unknown.value.body["param"] == "messages[1].audio.id"


def test_streamed_audio_matches_the_whole_response(client: openai.OpenAI) -> None:
    request = {
        "model": BASE,
        "messages": [{"role": "user", "content": "Say something."}],
        "modalities": ["text", "audio"],
        "audio": {"voice": "2", "format": "pcm16"},
        "max_tokens": 40,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**request)
    pcm = base64.b64decode(whole.choices[0].message.audio.data)
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    chunks = list(client.chat.completions.create(**request, stream=True))
    audio = [c.choices[0].delta.audio for c in chunks if c.choices and c.choices[0].delta.audio]
    streamed = b"".join(base64.b64decode(a.data) for a in audio if a.data)
    assert len(streamed) == len(pcm)
    # Both come from the same streaming vocoder path; sample values agree up to rounding.
    a = np.frombuffer(streamed, dtype="<i2").astype(np.int32)
    b = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    assert np.abs(a - b).max() <= 1
    # After the audio: the transcript in pieces, then the id's expiry.
    transcript = "".join(getattr(a, "transcript", None) or "" for a in audio)
    assert transcript == whole.choices[0].message.audio.transcript != ""
    # The id holds the reply's speech (chat/memory.py): it comes once, with its expiry, last.
    final = audio[-1]
    assert final.id.startswith("audio_") and final.expires_at > time.time()
    assert [getattr(a, "id", None) for a in audio[:-1]] == [None] * (len(audio) - 1)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


# ---- errors -----------------------------------------------------------------------------------


def test_n_above_one_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=2
        )
    assert error.value.status_code == 400
    assert error.value.body["param"] == "n"


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (audio_part("!!! not base64 !!!"), "messages[0].content[1].input_audio.data"),
        (audio_part("UklGRg==", fmt="xyz"), "messages[0].content[1].input_audio.format"),
        (
            audio_part(base64.b64encode(b"plain text, no sound " * 30).decode()),
            "messages[0].content[1].input_audio.data",
        ),
        ({"type": "image_url", "image_url": {"url": "x"}}, "messages[0].content[1].type"),
    ],
    ids=["bad-base64", "bad-format", "not-audio", "image"],
)
def test_bad_content_parts_name_the_field(client: openai.OpenAI, part: dict, param: str) -> None:
    message = {"role": "user", "content": [{"type": "text", "text": "hi"}, part]}
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=BASE, messages=[message], max_tokens=2)
    assert error.value.body["param"] == param
    assert param in error.value.body["message"]


@pytest.mark.parametrize(
    ("options", "param"),
    [
        (
            {"modalities": ["text", "audio"], "audio": {"voice": "nobody", "format": "wav"}},
            "audio.voice",
        ),
        (
            {"modalities": ["text", "audio"], "audio": {"voice": "2", "format": "ogg"}},
            "audio.format",
        ),
        ({"modalities": ["audio"]}, "modalities"),
        ({"max_completion_tokens": 100000}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_bad_options_name_the_field(client: openai.OpenAI, options: dict, param: str) -> None:
    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "hi"}], **options
        )
    assert error.value.status_code in (400, 422)
    assert error.value.body["param"] == param
    assert param in error.value.body["message"]


def test_bad_role_is_refused(gateway: str) -> None:
    body = {"messages": [{"role": "tool", "content": "x"}]}
    response = httpx.post(gateway + "/v1/chat/completions", json=body, timeout=30.0)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "messages.0.role"


# ---- aborting -----------------------------------------------------------------------------------


def lm_counters(lm_url: str) -> tuple[float, float]:
    """(requests running, tokens generated so far) from the vLLM worker's metrics."""
    values = {"vllm:num_requests_running": 0.0, "vllm:generation_tokens_total": 0.0}
    for line in httpx.get(lm_url + "/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in values:
            values[name] += float(line.rsplit(" ", 1)[1])
    return values["vllm:num_requests_running"], values["vllm:generation_tokens_total"]


def wait_idle(lm_url: str, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running, generated = lm_counters(lm_url)
        if running == 0:
            return generated
        time.sleep(0.2)
    raise AssertionError("the LM worker kept a request running")


def first_text(http: httpx.Client, body: dict) -> str:
    """The first text piece of a streamed reply (the stream is then abandoned)."""
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[len("data: ") :])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    return choices[0]["delta"]["content"]
    raise AssertionError("the reply had no text")


@pytest.mark.parametrize("how", ["client disconnects", "stop string"])
def test_ending_early_aborts_the_lm_request(servers, gateway: str, how: str) -> None:  # noqa: ANN001
    lm_url = servers.lm(BASE)
    before = wait_idle(lm_url)
    body = {
        "messages": [{"role": "user", "content": "Talk for a long time."}],
        "max_tokens": 2000,
        "temperature": 0,
        "stream": True,
    }
    with httpx.Client(base_url=gateway, timeout=60) as http:
        if how == "stop string":
            # The first piece of greedy output, so the stop hits at once.
            body["stop"] = first_text(http, body)
            before = wait_idle(lm_url)
            reply = http.post("/v1/chat/completions", json={**body, "stream": False}).json()
            assert reply["choices"][0]["finish_reason"] == "stop"
            assert reply["choices"][0]["message"]["content"] == ""
        else:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert next(response.iter_lines()).startswith("data: ")
    after = wait_idle(lm_url)
    assert after - before < 2000, "vLLM generated the whole budget for an abandoned request"


# ---- pieces without servers -------------------------------------------------------------------


@settings(max_examples=300)
@given(
    text=st.text(alphabet="ab \n", max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=8),
    stops=st.lists(st.text(alphabet="ab \n", min_size=1, max_size=4), max_size=4),
)
def test_stop_matcher_cuts_before_the_first_stop(
    text: str, cuts: list[int], stops: list[str]
) -> None:
    bounds = sorted({0, len(text), *(min(cut, len(text)) for cut in cuts)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    matcher = StopMatcher(stops)
    out = ""
    for piece in pieces:
        out += matcher.feed(piece)
        if matcher.stopped:
            break
    out += matcher.flush()
    # Checked after every character: the text up to the first point some stop is complete.
    complete = next(
        (end for end in range(len(text) + 1) if any(stop in text[:end] for stop in stops)), None
    )
    if complete is None:
        assert out == text and not matcher.stopped
    else:
        seen = text[:complete]
        assert out == seen[: min(seen.find(stop) for stop in stops if stop in seen)]
        assert matcher.stopped
