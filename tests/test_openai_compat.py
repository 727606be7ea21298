"""OpenAI compatibility without silent gaps (docs/audio-api.md): every request field is honoured
or refused by name, transcription logprobs stream, and model names resolve through the alias
table or are a 404. Against the real LM worker (vLLM), speech worker and gateway, with the
official `openai` SDK where it has the call and raw HTTP elsewhere."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import soundfile
from pydantic import ValidationError
from websockets.asyncio.client import connect

from service.checkpoints.layout import BASE
from service.gateway.settings import GatewaySettings

pytestmark = pytest.mark.slow

ASR_TOKENS = 16
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(servers) -> str:  # noqa: ANN001
    return servers.gateway(BASE)


@pytest.fixture(scope="module")
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, speech_file: Path) -> Path:
    wav, rate = soundfile.read(speech_file, dtype="float32")
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    soundfile.write(path, wav[rate : 3 * rate], rate, subtype="PCM_16")
    return path


def refused_param(call: Any, **kwargs: Any) -> dict:
    """The error body of a call the gateway must refuse with a 400."""
    with pytest.raises(openai.BadRequestError) as error:
        call(**kwargs)
    assert error.value.status_code == 400
    body = error.value.body
    assert body["param"] and body["param"] in body["message"], body
    return body


# ---- transcription logprobs -----------------------------------------------------------------


def test_streamed_logprobs_are_those_of_the_whole_answer(client: openai.OpenAI, clip: Path) -> None:
    asr = {"model": "gpt-4o-transcribe", "temperature": 0, "include": ["logprobs"]}
    extra = {"extra_body": {"max_tokens": ASR_TOKENS}}
    whole = client.audio.transcriptions.create(file=clip.open("rb"), **asr, **extra)
    events = list(
        client.audio.transcriptions.create(file=clip.open("rb"), stream=True, **asr, **extra)
    )
    *deltas, done = events
    assert deltas and done.type == "transcript.text.done"
    streamed = [entry for event in deltas for entry in event.logprobs]
    # Each delta carries the tokens its text came from (the transcript's first space is not
    # part of its text); together they are the whole answer's.
    for event in deltas:
        text = b"".join(bytes(entry.bytes) for entry in event.logprobs).decode(errors="replace")
        assert text.removeprefix(" ") == event.delta.removeprefix(" ")
    key = [(e.token, e.logprob, e.bytes) for e in whole.logprobs]
    assert [(e.token, e.logprob, e.bytes) for e in streamed] == key
    assert [(e.token, e.logprob, e.bytes) for e in done.logprobs] == key
    assert done.text == whole.text


def test_no_logprobs_unless_asked(client: openai.OpenAI, clip: Path) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1", file=clip.open("rb"), extra_body={"max_tokens": 4}
    )
    assert result.logprobs is None


# ---- refusals by name -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "param"),
    [
        (
            {"timestamp_granularities": ["segment"], "response_format": "verbose_json"},
            "timestamp_granularities",
        ),
        ({"chunking_strategy": "auto"}, "chunking_strategy"),
        ({"chunking_strategy": {"type": "server_vad"}}, "chunking_strategy"),
        ({"language": "fr"}, "language"),
        ({"include": ["logprobs"], "response_format": "text"}, "include"),
        ({"include": ["everything"]}, "include"),
        ({"extra_body": {"diarize": "true"}}, "diarize"),
    ],
)
def test_transcription_refusals_name_the_field(
    client: openai.OpenAI, clip: Path, options: dict, param: str
) -> None:
    body = refused_param(
        client.audio.transcriptions.create, model="whisper-1", file=clip.open("rb"), **options
    )
    assert body["param"] == param


def test_english_is_honoured_and_reported_as_what_was_done(
    client: openai.OpenAI, clip: Path
) -> None:
    verbose = client.audio.transcriptions.create(
        model="whisper-1",
        file=clip.open("rb"),
        language="EN-gb",
        response_format="verbose_json",
        extra_body={"max_tokens": 4},
    )
    assert verbose.language == "english"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"speed": 1.5}, "speed"),
        ({"instructions": "whisper"}, "instructions"),
        ({"extra_body": {"emotion": "happy"}}, "emotion"),
        ({"voice": {"id": "2", "name": "x"}}, "voice.name"),
    ],
)
def test_speech_refusals_name_the_field(client: openai.OpenAI, extra: dict, param: str) -> None:
    options: dict[str, Any] = {"model": "tts-1", "voice": "2", "input": "hi", **extra}
    body = refused_param(client.audio.speech.create, **options)
    assert body["param"] == param


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"store": True}, "store"),
        ({"metadata": {"a": "b"}}, "metadata"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        (
            {"stream_options": {"include_obfuscation": True}, "stream": True},
            "stream_options.include_obfuscation",
        ),
        ({"extra_body": {"audio": {"voice": "2", "format": "wav", "speed": 2}}}, "audio.speed"),
        ({"extra_body": {"best_of": 2}}, "best_of"),
        ({"response_format": {"type": "text", "json_schema": {"name": "x"}}}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"max_tokens": 3, "max_completion_tokens": 7}, "max_tokens"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        (
            {
                "modalities": ["text", "audio"],
                "audio": {"voice": {"id": "1", "x": "y"}, "format": "wav"},
            },
            "audio.voice.x",
        ),
    ],
)
def test_chat_refusals_name_the_field(client: openai.OpenAI, options: dict, param: str) -> None:
    body = refused_param(
        client.chat.completions.create, model="gpt-4o-audio-preview", messages=HI, **options
    )
    assert body["param"] == param


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "user", "content": "hi", "name": "bob"}, "messages[0].name"),
        (
            {"role": "assistant", "content": "x", "tool_calls": [{"id": "c"}]},
            "messages[0].tool_calls",
        ),
        (
            {"role": "user", "content": "hi", "cache_control": {"type": "x"}},
            "messages[0].cache_control",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {}}]},
            "messages[0].content[0].cache_control",
        ),
        (
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_audio",
                        "input_audio": {"data": "AAAA", "format": "wav", "sample_rate": 16000},
                    }
                ],
            },
            "messages[0].content[0].input_audio.sample_rate",
        ),
    ],
)
def test_chat_message_refusals_name_the_field(gateway: str, message: dict, param: str) -> None:
    body = {"messages": [message], "max_tokens": 2}
    response = httpx.post(gateway + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_chat_accepts_a_response_message_sent_back(client: openai.OpenAI) -> None:
    """An SDK user appends `choices[0].message` to the history: its null fields are not sent
    options, and the follow-up works."""
    first = client.chat.completions.create(model=BASE, messages=HI, max_tokens=3, temperature=0)
    sent_back = first.choices[0].message.model_dump()
    assert "tool_calls" in sent_back and sent_back["tool_calls"] is None
    follow = [*HI, sent_back, {"role": "user", "content": "and?"}]
    second = client.chat.completions.create(
        model=BASE,
        messages=follow,
        max_tokens=3,
        temperature=0,
        store=False,
        service_tier="auto",
        prompt_cache_key="conversation-1",
    )
    assert second.choices[0].finish_reason in ("stop", "length")


# ---- model names ----------------------------------------------------------------------------


def test_models_lists_the_aliases(client: openai.OpenAI) -> None:
    cards = {card.id: card for card in client.models.list()}
    assert BASE in cards and getattr(cards[BASE], "alias_of", None) is None
    for alias in ("whisper-1", "gpt-4o-mini-tts", "gpt-4o-audio-preview", "gpt-realtime"):
        assert cards[alias].alias_of == BASE
    assert client.models.retrieve("tts-1").alias_of == BASE
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-5")


def test_aliases_answer_with_the_served_model(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gpt-4o-mini-audio-preview", messages=HI, max_tokens=2
    )
    assert reply.model == BASE


def test_unknown_model_names_are_404_everywhere(client: openai.OpenAI, clip: Path) -> None:
    calls = [
        lambda: client.audio.transcriptions.create(model="gpt-5-transcribe", file=clip.open("rb")),
        lambda: client.audio.speech.create(model="eleven-tts", voice="2", input="hi"),
        lambda: client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=2),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as error:
            call()
        assert error.value.body["code"] == "model_not_found"
        assert error.value.body["param"] == "model"


async def _realtime_first_event(url: str) -> dict:
    async with connect(url, open_timeout=60) as connection:
        return json.loads(await asyncio.wait_for(connection.recv(), 60))


async def _session_updates(url: str, models: list[str]) -> list[dict]:
    """The answer to a session.update naming each of `models`."""
    answers = []
    async with connect(url, open_timeout=60) as connection:
        await connection.recv()  # session.created
        for model in models:
            update = {"type": "session.update", "session": {"type": "realtime", "model": model}}
            await connection.send(json.dumps(update))
            answers.append(json.loads(await asyncio.wait_for(connection.recv(), 60)))
    return answers


def test_realtime_resolves_model_names_the_same_way(gateway: str) -> None:
    ws = gateway.replace("http://", "ws://") + "/v1/realtime?model="
    created = asyncio.run(_realtime_first_event(ws + "gpt-realtime"))
    assert created["type"] == "session.created", created
    assert created["session"]["model"] == BASE
    same, unknown = asyncio.run(_session_updates(ws + "gpt-realtime", ["gpt-realtime", "gpt-5"]))
    assert same["type"] == "session.updated", same
    assert unknown["type"] == "error" and unknown["error"]["code"] == "model_not_found", unknown
    assert unknown["error"]["param"] == "session.model"
    refused = asyncio.run(_realtime_first_event(ws + "gpt-5-realtime"))
    assert refused["type"] == "error", refused
    assert refused["error"]["code"] == "model_not_found"


async def _transcription_model_updates(url: str, models: list[str]) -> list[dict]:
    answers = []
    async with connect(url, open_timeout=60) as connection:
        await connection.recv()  # session.created
        for model in models:
            audio = {"input": {"transcription": {"model": model}}}
            update = {"type": "session.update", "session": {"type": "realtime", "audio": audio}}
            await connection.send(json.dumps(update))
            answers.append(json.loads(await asyncio.wait_for(connection.recv(), 60)))
    return answers


def test_realtime_transcription_model_names_the_sessions_model(gateway: str) -> None:
    ws = gateway.replace("http://", "ws://") + "/v1/realtime"
    alias, served, unknown = asyncio.run(
        _transcription_model_updates(ws, ["gpt-4o-transcribe", BASE, "whisper-9"])
    )
    assert alias["type"] == served["type"] == "session.updated", (alias, served)
    assert unknown["type"] == "error" and unknown["error"]["code"] == "model_not_found", unknown
    assert unknown["error"]["param"] == "session.audio.input.transcription.model"


def test_alias_table_is_a_setting(servers, clip: Path) -> None:  # noqa: ANN001
    """With `--model-aliases my-asr=default`, OpenAI's default names are unknown (404) and the
    configured one works."""
    url = servers.gateway(BASE, "--model-aliases", "my-asr=default", name="aliases")
    custom = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
    assert [card.id for card in custom.models.list()] == [BASE, "my-asr"]
    result = custom.audio.transcriptions.create(
        model="my-asr", file=clip.open("rb"), extra_body={"max_tokens": 4}
    )
    assert isinstance(result.text, str)
    with pytest.raises(openai.NotFoundError):
        custom.audio.transcriptions.create(model="whisper-1", file=clip.open("rb"))


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("whisper-1", "is not name=target"),
        ("whisper-1=whisper-large", "the target must be"),
        (f"{BASE}=default", "cannot redefine"),
        ("a=default,a=default", "twice"),
    ],
)
def test_malformed_alias_tables_are_refused_at_start(table: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        GatewaySettings(model_aliases=table)
