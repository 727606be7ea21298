"""WS /v1/realtime against the real processes (vLLM, speech worker, gateway).

The client here is written from the protocol (OpenAI Realtime events over raw `websockets`),
not with the project's SDK, so the tests check the wire format itself. Event names are accepted
in both the GA and the beta spelling.

Also unit tests of the pure parts: parsing, the VAD on the real speech file, input buffering,
prompt truncation and cutting a reply back to the audio that was sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.checkpoints.layout import BASE
from service.gateway.realtime.conversation import (
    Part,
    fit_prompt,
    head_hubert,
    keep_speech_samples,
    tail_speech,
)
from service.gateway.realtime.input_audio import InputAudio, PauseDetected, TurnDetected
from service.gateway.realtime.protocol import ProtocolError, parse_client_event
from service.gateway.realtime.response import FIRST_AUDIO_PHASES
from service.gateway.realtime.vad import (
    SpeechPaused,
    SpeechStarted,
    SpeechStopped,
    VadSettings,
    VadStream,
)
from service.lm.prompt import SpeechInput, TextInput, build_prompt
from tests.support.realtime_client import (
    EVENT_TIMEOUT,
    RATE,
    Client,
    open_client,
    run,
    ws_url,
)

# ---- audio -------------------------------------------------------------------------------


def speech_pcm(path: Path, rate: int = RATE) -> bytes:
    """The test speech file as pcm16 at `rate` (resampled with scipy, not the project's code)."""
    wave, file_rate = soundfile.read(str(path), dtype="float32")
    assert file_rate == 16000
    if rate != file_rate:
        wave = resample_poly(wave, rate // 8000, file_rate // 8000)
    return (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def silence(seconds: float, rate: int = RATE) -> bytes:
    return bytes(int(seconds * rate) * 2)


def assert_ended(response: dict[str, Any], cap: int) -> None:
    """A reply ends by itself (completed, under its cap) or at its cap (incomplete, saying why).

    The random test LM may say a line end (allowed in speech replies) at any point, or never.
    Tests that need a reply's audio ask for greedy decoding (temperature 0): a sampled reply may
    end at its first token and have no audio at all (seen once in CI).
    """
    tokens = response["usage"]["output_tokens"]
    if response["status"] == "completed":  # its last token may be the cap-th
        assert 0 < tokens <= cap, response
    else:
        assert response["status"] == "incomplete", response
        assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
        assert tokens == cap


# The speech file has speech at about 0.2-2.5 s, 4.1-6.9 s and 7.2-8.9 s: a silence of 2 s
# ends the turn only after the whole utterance.
ONE_TURN = {"type": "server_vad", "silence_duration_ms": 2000}


@pytest.fixture(scope="module")
def gateway(servers) -> str:  # noqa: ANN001
    return servers.gateway(BASE)


@pytest.fixture(scope="module")
def lm_url(servers) -> str:  # noqa: ANN001
    return servers.lm(BASE)


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{[^}]*" + re.escape(labels) + r"[^}]*\}" if labels else "")
    values = [float(m.group(1)) for m in re.finditer(rf"^{pattern}\s+([0-9.e+-]+)$", text, re.M)]
    return sum(values)


def running_requests(lm_url: str) -> float:
    text = httpx.get(lm_url + "/metrics", timeout=10).text
    return metric(text, "vllm:num_requests_running")


def generated_tokens(lm_url: str) -> float:
    text = httpx.get(lm_url + "/metrics", timeout=10).text
    return metric(text, "vllm:generation_tokens_total")


def wait_idle(lm_url: str, timeout: float = 20.0) -> float:
    deadline = time.monotonic() + timeout
    value = running_requests(lm_url)
    while value > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        value = running_requests(lm_url)
    return value


# ---- sessions against the real stack -----------------------------------------------------


def test_session_created_has_defaults(gateway: str) -> None:
    async def scenario() -> dict[str, Any]:
        client = await open_client(gateway)
        await client.ws.close()
        return client.seen[0]

    session = run(scenario())["session"]
    assert session["model"] == BASE
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["format"]["rate"] == 24000
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"


def test_server_vad_turn_gets_a_spoken_reply(gateway: str, speech_file: Path) -> None:
    async def scenario() -> Client:
        client = await open_client(gateway)
        updated = await client.update(
            audio={"input": {"turn_detection": ONE_TURN}}, max_output_tokens=48, temperature=0.0
        )
        assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 2000
        await client.append(speech_pcm(speech_file) + silence(3.0))
        await client.until("response.done")
        await client.ws.close()
        return client

    client = run(scenario())
    started = client.of("input_audio_buffer.speech_started")
    stopped = client.of("input_audio_buffer.speech_stopped")
    committed = client.of("input_audio_buffer.committed")
    assert len(started) == len(stopped) == len(committed) == 1
    assert 0 <= started[0]["audio_start_ms"] < 600
    assert 8500 <= stopped[0]["audio_end_ms"] <= 9400
    assert committed[0]["item_id"] == stopped[0]["item_id"] == started[0]["item_id"]
    user_items = [e["item"] for e in client.of("conversation.item.added")]
    assert user_items[0]["role"] == "user"
    assert user_items[0]["content"][0]["type"] == "input_audio"
    done = client.of("response.done")[0]["response"]
    assert_ended(done, 48)
    # The prompt is the user's speech (about 9 s: well over a hundred HuBERT tokens).
    assert done["usage"]["input_tokens"] > 100
    response_id = done["id"]
    assert client.audio_samples(response_id) > RATE // 10
    deltas = "".join(e["delta"] for e in client.of("response.output_audio_transcript.delta"))
    transcript = client.of("response.output_audio_transcript.done")[0]["transcript"]
    assert transcript == deltas
    content = done["output"][0]["content"][0]
    assert content["type"] in ("output_audio", "audio") and content["transcript"] == transcript
    order = [e["type"] for e in client.seen]
    assert order.index("input_audio_buffer.speech_stopped") < order.index("response.created")
    assert order.index("response.output_audio.delta") < order.index("response.done")
    metrics = httpx.get(gateway + "/metrics", timeout=10).text
    assert metric(metrics, "spiritlm_realtime_first_audio_seconds_count", 'trigger="vad"') >= 1
    # Every reply's first audio is split into phases that add up to it.
    replies = metric(metrics, "spiritlm_realtime_first_audio_seconds_count", "trigger=")
    phases = "spiritlm_realtime_first_audio_phase_seconds"
    for phase in FIRST_AUDIO_PHASES:
        assert metric(metrics, f"{phases}_count", f'phase="{phase}"') == replies
    assert metric(metrics, f"{phases}_sum", 'phase="vocoder"') > 0
    first_audio = metric(metrics, "spiritlm_realtime_first_audio_seconds_sum", "trigger=")
    assert abs(metric(metrics, f"{phases}_sum", "phase=") - first_audio) < 0.01 * replies


def test_manual_commit_at_16khz_gives_a_text_reply(gateway: str, speech_file: Path) -> None:
    async def scenario() -> Client:
        client = await open_client(gateway)
        await client.update(
            output_modalities=["text"],
            audio={
                "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
            },
            max_output_tokens=24,
        )
        await client.append(speech_pcm(speech_file, 16000), rate=16000)
        await client.send(type="input_audio_buffer.commit", event_id="commit-1")
        committed = await client.until("input_audio_buffer.committed")
        await client.send(type="response.create")
        await client.until("response.done")
        await client.ws.close()
        return client, committed

    client, committed = run(scenario())
    assert not client.of("input_audio_buffer.speech_started")  # no VAD in manual mode
    assert committed["item_id"].startswith("item_")
    done = client.of("response.done")[0]["response"]
    assert done["status"] in ("completed", "incomplete")
    assert done["output_modalities"] == ["text"]
    assert done["usage"]["input_tokens"] > 100
    assert not client.of("response.output_audio.delta")
    text = "".join(e["delta"] for e in client.of("response.output_text.delta"))
    assert "\n" not in text
    assert client.of("response.output_text.done")[0]["text"] == text


def test_text_item_gets_a_spoken_reply_and_history_grows(gateway: str) -> None:
    async def scenario() -> Client:
        client = await open_client(gateway)
        await client.update(max_output_tokens=30, audio={"output": {"voice": "1"}}, temperature=0.0)
        for turn in range(2):
            await client.send(
                type="conversation.item.create",
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": f"Hello there, turn {turn}."}],
                },
            )
            await client.until("conversation.item.added")
            await client.send(type="response.create")
            await client.until("response.done")
        await client.ws.close()
        return client

    client = run(scenario())
    first, second = [e["response"] for e in client.of("response.done")]
    assert_ended(first, 30)
    assert_ended(second, 30)
    for response in (first, second):
        assert client.audio_samples(response["id"]) > 0
    # The second prompt holds the first turn, the first reply's tokens and the new text.
    grown = second["usage"]["input_tokens"] - first["usage"]["input_tokens"]
    assert grown > first["usage"]["output_tokens"]


def test_response_cancel_aborts_generation(gateway: str, lm_url: str) -> None:
    async def scenario() -> Client:
        client = await open_client(gateway)
        await client.update(max_output_tokens=2048, audio={"input": {"turn_detection": None}})
        await client.send(
            type="conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Talk."}],
            },
        )
        await client.send(type="response.create")
        # The first generated token has arrived: 2048 take the LM seconds, so it is mid-way.
        part = await client.until("response.content_part.added")
        await client.send(type="response.cancel", response_id=part["response_id"])
        await client.until("response.done")
        # A later response still works, and its prompt holds only what was sent.
        await client.send(type="response.create", response={"max_output_tokens": 10})
        await client.until("response.done")
        await client.ws.close()
        return client

    generated_before = generated_tokens(lm_url)
    client = run(scenario())
    cancelled, after = [e["response"] for e in client.of("response.done")]
    assert cancelled["status"] == "cancelled"
    assert cancelled["status_details"]["reason"] == "client_cancelled"
    assert cancelled["usage"]["output_tokens"] < 2048
    done_at = client.seen.index(client.of("response.done")[0])
    late = [
        e
        for e in client.seen[done_at:]
        if e["type"] == "response.output_audio.delta" and e["response_id"] == cancelled["id"]
    ]
    assert not late
    assert_ended(after, 10)
    # The new prompt adds the tokens kept of the cancelled reply and, when any were kept, its
    # turn end (a newline) and the [Speech] of the new reply.
    kept = after["usage"]["input_tokens"] - cancelled["usage"]["input_tokens"]
    assert 0 <= kept <= cancelled["usage"]["output_tokens"] + 2
    assert wait_idle(lm_url) == 0
    # vLLM stopped the cancelled request (its HTTP stream was closed): all requests of this
    # test together generated fewer tokens than the cancelled one alone asked for.
    assert generated_tokens(lm_url) - generated_before < 2048


def test_barge_in_cancels_the_reply(gateway: str, lm_url: str, speech_file: Path) -> None:
    async def scenario() -> Client:
        client = await open_client(gateway)
        await client.update(
            audio={"input": {"turn_detection": ONE_TURN}}, max_output_tokens=2048, temperature=0.0
        )
        speech = speech_pcm(speech_file)
        await client.append(speech + silence(2.5))
        await client.until("response.output_audio.delta")
        await client.update(max_output_tokens=30)  # for the replies still to come
        await client.append(speech + silence(2.5))  # the user talks over the reply
        await client.until("response.done")
        await client.until("response.done")  # the reply to the second turn
        await client.ws.close()
        return client

    client = run(scenario())
    interrupted, answer = [e["response"] for e in client.of("response.done")]
    assert interrupted["status"] == "cancelled"
    assert interrupted["status_details"]["reason"] == "turn_detected"
    # The second turn is answered in full, after the interrupted reply wound down.
    assert_ended(answer, 30)
    assert client.audio_samples(answer["id"]) > 0
    # Its prompt: both user turns and only what of the first reply was sent.
    sent = client.audio_samples(interrupted["id"])
    assert answer["usage"]["input_tokens"] > interrupted["usage"]["input_tokens"] + 100
    assert sent > 0
    types = [e["type"] for e in client.seen]
    second_start = [i for i, t in enumerate(types) if t == "input_audio_buffer.speech_started"][1]
    assert second_start < types.index("response.done")
    assert len(client.of("input_audio_buffer.committed")) == 2
    assert wait_idle(lm_url) == 0


def test_bad_events_get_errors_and_the_session_survives(gateway: str) -> None:
    async def scenario() -> tuple[Client, dict[str, Any]]:
        client = await open_client(gateway)
        await client.ws.send("{not json")
        await client.until("error")
        await client.send(type="no.such.event", event_id="evt-unknown")
        await client.until("error")
        await client.send(
            type="input_audio_buffer.append", audio="***not base64***", event_id="evt-b64"
        )
        await client.until("error")
        await client.send(type="input_audio_buffer.append", audio="AA==", event_id="evt-odd")
        await client.until("error")
        await client.send(type="session.update", session={"temperature": 9}, event_id="evt-range")
        await client.until("error")
        await client.send(type="response.cancel", event_id="evt-cancel")
        await client.until("error")
        misspelt = {"instructions": "not applied", "temprature": 0.5}
        await client.send(type="session.update", session=misspelt, event_id="evt-unknown-field")
        await client.until("error")
        oversized = "A" * (5 * 1024 * 1024)
        await client.send(type="input_audio_buffer.append", audio=oversized, event_id="evt-big")
        await client.until("error")
        await client.ws.send(b"\x00\x01binary")
        await client.until("error")
        updated = await client.update(instructions="still here")
        await client.ws.close()
        return client, updated

    client, updated = run(scenario())
    errors = [e["error"] for e in client.of("error")]
    assert [e["code"] for e in errors] == [
        "invalid_json",
        "unknown_event",
        "invalid_value",
        "invalid_value",
        "invalid_value",
        "response_cancel_not_active",
        "unknown_parameter",
        "message_too_large",
        "invalid_event",
    ]
    by_event = {e["event_id"]: e for e in errors}
    assert by_event["evt-unknown-field"]["param"] == "session.temprature"
    # Nothing of the refused update was applied.
    assert updated["session"]["instructions"] == "still here"
    assert by_event["evt-b64"]["param"] == "audio"
    assert by_event["evt-odd"]["param"] == "audio"
    assert by_event["evt-range"]["param"] == "session.temperature"
    assert "evt-unknown" in by_event and "evt-cancel" in by_event
    assert updated["session"]["instructions"] == "still here"
    assert httpx.get(gateway + "/ready", timeout=10).status_code == 200


def test_the_reply_being_generated_cannot_be_truncated_until_cancelled(gateway: str) -> None:
    async def scenario() -> Client:
        client = await open_client(gateway)
        await client.update(
            max_output_tokens=300, audio={"input": {"turn_detection": None}}, temperature=0.0
        )
        await client.send(type="response.create")
        delta = await client.until("response.output_audio.delta")
        cut = {"item_id": delta["item_id"], "content_index": 0, "audio_end_ms": 100}
        await client.send(type="conversation.item.truncate", event_id="evt-early", **cut)
        await client.until("error")
        await client.send(type="response.cancel")
        await client.send(type="conversation.item.truncate", event_id="evt-late", **cut)
        await client.until("conversation.item.truncated")
        await client.until("response.done")
        await client.ws.close()
        return client

    client = run(scenario())
    [error] = [e["error"] for e in client.of("error")]
    assert (error["event_id"], error["param"]) == ("evt-early", "item_id")
    assert "response.cancel" in error["message"]
    assert client.of("response.done")[0]["response"]["status"] == "cancelled"


def test_the_input_format_changes_only_with_an_empty_buffer(gateway: str) -> None:
    async def scenario() -> Client:
        client = await open_client(gateway)
        await client.update(audio={"input": {"turn_detection": None}})
        await client.append(silence(1.0))
        g711 = {"input": {"format": {"type": "audio/pcmu"}}}
        await client.send(type="session.update", session={"audio": g711}, event_id="evt-format")
        await client.until("error")
        await client.send(type="input_audio_buffer.clear")
        await client.until("input_audio_buffer.cleared")
        await client.update(audio=g711)
        await client.ws.close()
        return client

    client = run(scenario())
    [error] = [e["error"] for e in client.of("error")]
    assert (error["event_id"], error["param"]) == ("evt-format", "session.audio.input.format")
    updated = client.of("session.updated")[-1]["session"]
    assert updated["audio"]["input"]["format"]["type"] == "audio/pcmu"


def test_many_concurrent_sessions(gateway: str) -> None:
    sessions = 8

    async def one(index: int) -> dict[str, Any]:
        client = await open_client(gateway)
        await client.update(
            max_output_tokens=20, audio={"input": {"turn_detection": None}}, temperature=0.0
        )
        await client.send(
            type="conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": f"Caller {index}."}],
            },
        )
        await client.send(type="response.create")
        done = (await client.until("response.done"))["response"]
        done["samples"] = client.audio_samples(done["id"])
        await client.ws.close()
        return done

    async def scenario() -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(index) for index in range(sessions)))

    results = run(scenario())
    for result in results:
        assert_ended(result, 20)
    assert all(r["samples"] > 0 for r in results)
    assert len({r["conversation_id"] for r in results}) == sessions
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(gateway + "/metrics", timeout=10).text
        if metric(text, "spiritlm_realtime_sessions_active") == 0:
            break
        time.sleep(0.2)
    assert metric(text, "spiritlm_realtime_sessions_active") == 0


def test_beta_dialect_names(gateway: str) -> None:
    async def scenario() -> list[str]:
        ws = await connect(
            ws_url(gateway), max_size=None, additional_headers={"OpenAI-Beta": "realtime=v1"}
        )
        names = []
        created = json.loads(await ws.recv())
        assert created["session"]["modalities"] == ["audio"]
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"turn_detection": None, "max_response_output_tokens": 12},
                }
            )
        )
        await ws.send(
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Hi"}],
                    },
                }
            )
        )
        await ws.send(json.dumps({"type": "response.create"}))
        while "response.done" not in names:
            names.append(json.loads(await asyncio.wait_for(ws.recv(), EVENT_TIMEOUT))["type"])
        await ws.close()
        return names

    names = run(scenario())
    assert "conversation.item.created" in names and "conversation.item.added" not in names
    assert "response.audio.delta" in names and "response.output_audio.delta" not in names
    assert "response.audio_transcript.done" in names


def test_session_cap_idle_timeout_and_keys(servers) -> None:  # noqa: ANN001
    key = "realtime-secret"
    gateway = servers.gateway(
        BASE,
        "--realtime-max-sessions",
        "2",
        "--realtime-idle-timeout-seconds",
        "3",
        "--api-keys",
        key,
        name="realtime-limits",
    )
    bearer = {"Authorization": f"Bearer {key}"}

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with pytest.raises(InvalidStatus) as refused_key:
            await connect(ws_url(gateway))
        seen["no_key_status"] = refused_key.value.response.status_code
        first = await open_client(gateway, **bearer)
        # Browsers cannot set headers: the key comes as a subprotocol, "realtime" is answered.
        browser_like = await connect(
            ws_url(gateway), subprotocols=["realtime", f"openai-insecure-api-key.{key}"]
        )
        seen["subprotocol"] = browser_like.subprotocol
        second = Client(browser_like)
        await second.until("session.created")
        refused = await connect(ws_url(gateway), additional_headers=bearer)
        seen["error"] = json.loads(await refused.recv())
        with pytest.raises(ConnectionClosed):
            await refused.recv()
        seen["full"] = (refused.close_code, refused.close_reason)
        await second.ws.close()
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(first.ws.recv(), 30)
        seen["idle"] = (first.ws.close_code, first.ws.close_reason, time.monotonic() - started)
        return seen

    seen = run(scenario())
    assert seen["no_key_status"] == 403
    assert seen["subprotocol"] == "realtime"
    code, reason = seen["full"]
    assert code == 1013 and "maximum of 2" in reason
    assert seen["error"]["error"]["code"] == "too_many_sessions"
    idle_code, idle_reason, idle_after = seen["idle"]
    assert idle_code == 1000 and idle_reason == "idle timeout" and idle_after < 10


def test_converse_command_saves_the_reply(gateway: str, speech_file: Path, tmp_path: Path) -> None:
    question, reply = tmp_path / "question.wav", tmp_path / "reply.wav"
    soundfile.write(str(question), np.frombuffer(speech_pcm(speech_file, 16000), "<i2"), 16000)
    clients = Path(__file__).resolve().parent.parent / "clients" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "spiritlm_client", "--base-url", gateway, "converse"]
        + ["--input", str(question), "-o", str(reply), "--speed", "0", "--max-tokens", "30"]
        # Greedy: a sampled reply of the random LM may end at its first token, with no audio.
        + ["--temperature", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(clients)},
    )
    assert done.returncode == 0, done.stderr
    info = soundfile.info(str(reply))
    assert info.samplerate == 24000 and info.frames > 0
    # The random LM's reply ends by itself or at its cap; both are a finished reply.
    assert re.search(r"reply (completed|incomplete)", done.stderr) and str(reply) in done.stderr


# ---- pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("[]", "invalid_event"),
        ('{"type": 3}', "missing_required_parameter"),
        ('{"type": "response.cancel", "response_id": 5}', "invalid_value"),
        ('{"type": "input_audio_buffer.append"}', "missing_required_parameter"),
        ("[" * 100000, "invalid_json"),
    ],
)
def test_parser_raises_only_protocol_errors(frame: str, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_event(frame)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("event", "param"),
    [
        ({"type": "response.create", "respons": {}}, "respons"),
        ({"type": "session.update", "session": {"voise": "1"}}, "session.voise"),
        ({"type": "session.update", "session": {"turn_detection": {"eagerness": "low"}}},
         "session.turn_detection.eagerness"),
        ({"type": "session.update", "session": {"audio": {"output": {"volume": 2}}}},
         "session.audio.output.volume"),
        ({"type": "response.create", "response": {"max_tokens": 5}}, "response.max_tokens"),
        ({"type": "conversation.item.create",
          "item": {"role": "user",
                   "content": [{"type": "input_text", "text": "hi", "lang": "en"}]}},
         "item.content.0.lang"),
    ],
)  # fmt: skip
def test_parser_refuses_unknown_fields_by_name(event: dict[str, Any], param: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_event(json.dumps(event))
    assert (caught.value.code, caught.value.param) == ("unknown_parameter", param)
    assert param in caught.value.message


@pytest.mark.parametrize(
    "metadata",
    [{str(i): "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}],
    ids=["17-pairs", "long-key", "long-value"],
)
def test_response_metadata_is_bounded_as_openai_bounds_it(metadata: dict[str, str]) -> None:
    event = {"type": "response.create", "response": {"metadata": metadata}}
    with pytest.raises(ProtocolError) as caught:
        parse_client_event(json.dumps(event))
    assert caught.value.code == "invalid_value"
    assert (caught.value.param or "").startswith("response.metadata")
    kept = {str(i): "v" * 512 for i in range(16)}
    parsed = parse_client_event(
        json.dumps({"type": "response.create", "response": {"metadata": kept}})
    )
    assert parsed.response.metadata == kept


def test_parser_accepts_an_items_object_and_status_as_openai_does() -> None:
    item = {"object": "realtime.item", "status": "completed", "role": "user",
            "content": [{"type": "input_text", "text": "hi"}]}  # fmt: skip
    event = parse_client_event(json.dumps({"type": "conversation.item.create", "item": item}))
    assert event.item.content[0].text == "hi"


def test_parser_accepts_ga_and_beta_session_fields() -> None:
    event = parse_client_event(
        json.dumps(
            {
                "type": "session.update",
                "event_id": "e1",
                "session": {
                    "modalities": ["text", "audio"],
                    "audio": {"input": {"turn_detection": None}},
                    "tools": [{"type": "function"}],
                },
            }
        )
    )
    assert event.event_id == "e1"
    assert event.session.modalities == ["text", "audio"]
    assert "turn_detection" in event.session.audio.input.model_fields_set


def test_vad_finds_the_speech_in_the_file(speech_file: Path) -> None:
    wave, rate = soundfile.read(str(speech_file), dtype="float32")
    settings = VadSettings(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    stream = VadStream(settings, rate)
    events = []
    for start in range(0, len(wave), 1600):  # 100 ms appends
        events += stream.feed(wave[start : start + 1600])
    events += stream.feed(np.zeros(rate, dtype=np.float32))
    turns = [e for e in events if not isinstance(e, SpeechPaused)]
    # Three stretches of speech; the 0.4 s pause at 6.9 s is shorter than the 500 ms needed.
    assert [type(e) for e in turns] == [SpeechStarted, SpeechStopped, SpeechStarted, SpeechStopped]
    assert 100 <= turns[0].audio_start_ms <= 400
    assert 2300 <= turns[1].audio_end_ms <= 2800
    assert 3900 <= turns[2].audio_start_ms <= 4300
    assert 8700 <= turns[3].audio_end_ms <= 9200
    # Each end of a turn was announced as a pause (250 ms in) starting at the same point.
    pauses = [e.audio_end_ms for e in events if isinstance(e, SpeechPaused)]
    assert turns[1].audio_end_ms in pauses and turns[3].audio_end_ms in pauses
    for pause in pauses:
        stop = next(
            e for e in events[events.index(SpeechPaused(pause)) :] if isinstance(e, SpeechStopped)
        )
        assert pause <= stop.audio_end_ms


def test_input_audio_commits_the_turn_with_prefix_padding(speech_file: Path) -> None:
    pcm = speech_pcm(speech_file, 16000) + silence(2.5, 16000)
    settings = VadSettings(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=2000)
    buffer = InputAudio(16000, max_seconds=30)
    buffer.set_vad(VadStream(settings, 16000))
    happened = []
    for start in range(0, len(pcm), 3200):
        happened += buffer.append(pcm[start : start + 3200])
    turns = [event for event in happened if isinstance(event, TurnDetected)]
    assert len(turns) == 1
    utterance = turns[0].utterance
    # The pause that became the end of the turn offered the very same utterance beforehand.
    candidates = [e.utterance for e in happened if isinstance(e, PauseDetected)]
    assert candidates[-1] == utterance
    started = next(e for e in happened if isinstance(e, SpeechStarted))
    assert utterance.start_ms == max(0, started.audio_start_ms - 300)
    assert utterance.end_ms == turns[0].stopped.audio_end_ms
    assert len(utterance.pcm16) == (utterance.end_ms - utterance.start_ms) * 16 * 2
    # Outside a turn the buffer holds no more than the padding (plus one VAD window of slack).
    assert buffer.buffered_samples <= 16000 * 0.4


def test_manual_buffer_limit_and_short_commit() -> None:
    buffer = InputAudio(16000, max_seconds=1)
    with pytest.raises(ProtocolError) as caught:
        buffer.commit_all()
    assert caught.value.code == "input_audio_buffer_commit_empty"
    buffer.append(silence(0.8, 16000))
    with pytest.raises(ProtocolError) as caught:
        buffer.append(silence(0.5, 16000))
    assert caught.value.code == "input_audio_buffer_full"
    assert len(buffer.commit_all().pcm16) == 0.8 * 16000 * 2


def test_tail_speech_keeps_the_style_in_force() -> None:
    tokens = "[St3][Pi7][Hu1][Hu2][Pi9][Hu3][St4][Hu5][Hu6]"
    assert tail_speech(tokens, 2) == "[St4][Pi9][Hu5][Hu6]"
    assert tail_speech(tokens, 100) == tokens
    assert tail_speech(tokens, 0) == ""
    assert head_hubert(tokens, 2) == "[St3][Pi7][Hu1][Hu2][Pi9]"


def test_fit_prompt_drops_the_oldest_turns_first() -> None:
    turns = [
        [SpeechInput("[Hu1]" * 50)],
        [TextInput("middle turn"), TextInput("\n")],
        [SpeechInput("[Hu2]" * 30)],
    ]

    def count(prompt: str) -> int:  # one token per speech token or character of text
        return len(re.findall(r"\[(?:Hu|Pi|St)\d+\]|\[Text\]|\[Speech\]|.", prompt, re.S)) + 1

    whole = fit_prompt([], turns, "speech", 1000, count)
    assert whole == build_prompt([p for t in turns for p in t], "speech")
    fitted = fit_prompt([], turns, "speech", 60, count)
    assert fitted.startswith("[Text]middle turn\n[Speech][Hu2]") and "[Hu1]" not in fitted
    assert count(fitted) <= 60
    cut = fit_prompt([TextInput("Be kind."), TextInput("\n")], turns, "speech", 25, count)
    assert cut.startswith("[Text]Be kind.\n[Speech][Hu2]") and count(cut) <= 25


def test_reply_cut_to_the_audio_sent() -> None:
    part = Part(
        "audio",
        tokens="[Hu1][Hu2][Hu3][Hu4][Hu5][Hu6]",
        samples_sent=6000,
        sample_rate=24000,
        finished=False,
    )
    keep_speech_samples(part, 6000, fallback_per_token=1920.0)  # two 25 Hz frames per token
    assert part.tokens == "[Hu1][Hu2][Hu3]"
    finished = Part("audio", tokens="[Hu1][Hu2][Hu3][Hu4]", samples_sent=4000, sample_rate=24000)
    keep_speech_samples(finished, 2000, fallback_per_token=1.0)  # its own rate: 1000 per token
    assert finished.tokens == "[Hu1][Hu2]" and finished.samples_sent == 2000


def test_benchmark_stall_is_the_playback_pause() -> None:
    from service.bench.report import stall_of

    # 1 s of audio at t=0, the next second arrives at 1.5 s: the player waits 0.5 s.
    assert stall_of([(0.0, 1.0), (1.5, 1.0)]) == pytest.approx(0.5)
    # Ahead of time: no pause; pauses add up and shift later deadlines.
    assert stall_of([(0.0, 1.0), (0.5, 1.0), (1.9, 1.0)]) == 0.0
    assert stall_of([(0.0, 0.5), (1.0, 0.5), (2.0, 0.5)]) == pytest.approx(1.0)
    assert stall_of([]) == 0.0


def test_outbox_holds_back_audio_for_a_client_that_does_not_read() -> None:
    from service.gateway.realtime.outbox import Outbox

    async def scenario() -> tuple[bool, bool, bool, int]:
        outbox = Outbox(limit=100, audio_limit=3)
        for index in range(3):
            outbox.put({"type": "audio", "index": index}, audio_of="resp_1")
        outbox.put({"type": "text"})  # other events do not count against the audio bound
        producer = asyncio.create_task(outbox.wait_for_audio_room())
        await asyncio.sleep(0.05)
        held = not producer.done()
        await outbox.get()  # the client reads one audio delta: room for one more
        await asyncio.wait_for(producer, 1)
        outbox.put({"type": "audio", "index": 3}, audio_of="resp_1")
        second = asyncio.create_task(outbox.wait_for_audio_room())
        await asyncio.sleep(0.05)
        held_again = not second.done()
        outbox.drop_audio("resp_1")  # barge-in takes the pending audio back
        await asyncio.wait_for(second, 1)
        left = [await outbox.get()]
        outbox.close()
        closed_waiter = not outbox.audio_full()
        return held, held_again, closed_waiter, len(left)

    held, held_again, closed_waiter, left = asyncio.run(scenario())
    assert held and held_again
    assert closed_waiter and left == 1


def test_prompt_context_is_the_smallest_max_model_len_the_workers_report(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from service.gateway.pools import WorkerPool
    from service.gateway.realtime.prompting import PromptBuilder

    def worker(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        context = 1024 if request.url.host == "lm-a" else 4096
        return httpx.Response(200, json={"data": [{"id": BASE, "max_model_len": context}]})

    async def scenario() -> tuple[int, int, int]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(worker))
        pool = WorkerPool("lm", ["http://lm-a", "http://lm-b"], models_path="/v1/models", http=http)
        (tmp_path / "config.json").write_text('{"max_position_embeddings": 2048}')
        layout = SimpleNamespace(lm_dir=lambda model: tmp_path)
        engine: Any = SimpleNamespace(tokenizer=lambda model: None, lm_pool=pool, layout=layout)
        builder = PromptBuilder(engine, BASE)
        before = builder.context  # no worker has reported yet: the checkpoint's config.json
        await pool.check_all()
        reported = builder.context
        setting = PromptBuilder(engine, BASE, context_tokens=512).context
        await http.aclose()
        return before, reported, setting

    assert asyncio.run(scenario()) == (2048, 1024, 512)


def test_sdk_event_names_mirror_the_service_table() -> None:
    from spiritlm_client.realtime import _GA_NAMES

    from service.gateway.realtime.protocol import BETA_EVENT_NAMES

    assert {beta: ga for ga, beta in BETA_EVENT_NAMES.items()} == _GA_NAMES


# ---- fields refused by name, item retrieval, output audio clear, idle timeout --------------

REFUSED_SESSION_FIELDS = [
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "session.tools"),
    ({"tool_choice": "required"}, "session.tool_choice"),
    ({"tool_choice": {"type": "function", "name": "f"}}, "session.tool_choice"),
    ({"audio": {"output": {"speed": 1.5}}}, "session.audio.output.speed"),
    ({"speed": 0.8}, "session.speed"),
    (
        {"audio": {"input": {"noise_reduction": {"type": "near_field"}}}},
        "session.audio.input.noise_reduction",
    ),
    ({"input_audio_noise_reduction": {"type": "far_field"}}, "session.input_audio_noise_reduction"),
    ({"include": ["item.input_audio_transcription.logprobs"]}, "session.include"),
    ({"truncation": "disabled"}, "session.truncation"),
    ({"truncation": {"type": "retention_ratio", "retention_ratio": 0.5}}, "session.truncation"),
    ({"tracing": "auto"}, "session.tracing"),
    ({"prompt": {"id": "pmpt_123"}}, "session.prompt"),
]


def test_unhonoured_session_fields_are_refused_by_name(gateway: str) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        client = await open_client(gateway)
        errors = []
        for session, _ in REFUSED_SESSION_FIELDS:
            # The rest of a refused update is not applied either.
            await client.send(type="session.update", session={**session, "instructions": "no"})
            event = await client.until("error", "session.updated")
            errors.append(event)
        # Their defaults say what the session does anyway: accepted.
        accepted = await client.update(
            tools=[],
            tool_choice="auto",
            truncation="auto",
            include=[],
            audio={"output": {"speed": 1.0}, "input": {"noise_reduction": None}},
            instructions="yes",
        )
        await client.ws.close()
        return errors, accepted

    errors, accepted = run(scenario())
    for event, (_, param) in zip(errors, REFUSED_SESSION_FIELDS, strict=True):
        assert event["type"] == "error", (param, event)
        assert event["error"]["type"] == "invalid_request_error"
        assert event["error"]["code"] == "unsupported_parameter"
        assert event["error"]["param"] == param
        assert param in event["error"]["message"]
    tool_errors = [e["error"]["message"] for e in errors[:3]]
    assert all("does not call tools" in message for message in tool_errors)
    assert accepted["session"]["instructions"] == "yes"
    assert accepted["session"]["tools"] == []


def test_unhonoured_response_fields_are_refused_by_name(gateway: str) -> None:
    refused = [
        ({"tools": [{"type": "function", "name": "f"}]}, "response.tools"),
        ({"tool_choice": "required"}, "response.tool_choice"),
        ({"prompt": {"id": "pmpt_123"}}, "response.prompt"),
        ({"audio": {"output": {"voice": "7"}}}, "response.audio.output.voice"),
        (
            {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "response.audio.output.format",
        ),
        ({"audio": {"output": {"speed": 2.0}}}, "response.audio.output.speed"),
        ({"voice": "7"}, "response.voice"),
    ]

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        client = await open_client(gateway)
        content = [{"type": "input_text", "text": "Hi"}]
        hello = {"type": "message", "role": "user", "content": content}
        await client.send(type="conversation.item.create", item=hello)
        await client.until("conversation.item.added")
        errors = []
        for fields, _ in refused:
            await client.send(type="response.create", response={**fields, "max_output_tokens": 4})
            errors.append(await client.until("error", "response.created"))
        # The session's own voice and format may be repeated.
        same = {"output": {"voice": "alloy", "format": {"type": "audio/pcm", "rate": RATE}}}
        await client.send(
            type="response.create",
            response={"audio": same, "tool_choice": "none", "max_output_tokens": 4},
        )
        done = await client.until("response.done", "error")
        await client.ws.close()
        return errors, done

    errors, done = run(scenario())
    for event, (_, param) in zip(errors, refused, strict=True):
        assert event["type"] == "error", (param, event)
        assert event["error"]["code"] == "unsupported_parameter"
        assert event["error"]["param"] == param
    assert done["type"] == "response.done", done


def test_item_retrieve_returns_the_item_as_held(gateway: str) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        client = await open_client(gateway)
        await client.send(
            type="conversation.item.create",
            item={
                "id": "item_mine",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "remember me"}],
            },
        )
        await client.until("conversation.item.added")
        await client.send(type="conversation.item.retrieve", item_id="item_mine", event_id="e1")
        retrieved = await client.until("conversation.item.retrieved", "error")
        await client.send(type="conversation.item.retrieve", item_id="item_gone", event_id="e2")
        missing = await client.until("conversation.item.retrieved", "error")
        await client.ws.close()
        return retrieved, missing

    retrieved, missing = run(scenario())
    assert retrieved["type"] == "conversation.item.retrieved", retrieved
    item = retrieved["item"]
    assert item["id"] == "item_mine" and item["role"] == "user"
    assert item["content"] == [{"type": "input_text", "text": "remember me"}]
    assert missing["type"] == "error"
    assert missing["error"]["code"] == "item_not_found"
    assert missing["error"]["param"] == "item_id" and missing["error"]["event_id"] == "e2"


def test_output_audio_buffer_clear_stops_the_reply(gateway: str, lm_url: str) -> None:
    async def scenario() -> tuple[dict[str, Any], Client]:
        client = await open_client(gateway)
        await client.send(type="output_audio_buffer.clear")  # nothing played yet
        idle = await client.until("output_audio_buffer.cleared", "error")
        await client.update(max_output_tokens=2048, audio={"input": {"turn_detection": None}})
        talk = [{"type": "input_text", "text": "Talk."}]
        await client.send(
            type="conversation.item.create",
            item={"type": "message", "role": "user", "content": talk},
        )
        await client.send(type="response.create")
        # The first generated token has arrived: 2048 take the LM seconds, so it is mid-way.
        await client.until("response.content_part.added")
        await client.send(type="output_audio_buffer.clear")
        await client.until("output_audio_buffer.cleared")
        if not client.of("response.done"):
            await client.until("response.done")
        await client.ws.close()
        return idle, client

    idle, client = run(scenario())
    assert idle["type"] == "output_audio_buffer.cleared" and idle["response_id"] is None
    done = client.of("response.done")[0]["response"]
    cleared = client.of("output_audio_buffer.cleared")[-1]
    assert cleared["response_id"] == done["id"]
    assert done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "client_cancelled"
    assert done["usage"]["output_tokens"] < 2048
    done_at = client.seen.index(client.of("response.done")[0])
    late = client.of("response.output_audio.delta", done["id"])
    assert all(client.seen.index(delta) < done_at for delta in late)
    assert wait_idle(lm_url) == 0


def test_idle_timeout_triggers_a_turn_and_a_reply(gateway: str) -> None:
    detection = {"type": "server_vad", "idle_timeout_ms": 5000}

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], Client]:
        client = await open_client(gateway)
        await client.send(
            type="session.update",
            session={"turn_detection": {**detection, "idle_timeout_ms": 100}},
        )
        too_short = await client.until("error", "session.updated")
        updated = await client.update(turn_detection=detection, max_output_tokens=8)
        # Time is the input audio's: 6 s of silence, sent at once, is 6 s of idling.
        await client.append(silence(6.0))
        triggered = await client.until("input_audio_buffer.timeout_triggered")
        committed = await client.until("input_audio_buffer.committed")
        done = await client.until("response.done")
        await client.ws.close()
        return too_short, updated, [triggered, committed, done], client

    too_short, updated, (triggered, committed, done), client = run(scenario())
    assert too_short["type"] == "error"
    assert too_short["error"]["param"] == "session.turn_detection.idle_timeout_ms"
    assert updated["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 5000
    assert 5000 <= triggered["audio_end_ms"] - triggered["audio_start_ms"] < 5500
    assert triggered["audio_end_ms"] <= 6000
    assert committed["item_id"] == triggered["item_id"]
    assert done["response"]["status"] in ("completed", "incomplete")
    assert len(client.of("input_audio_buffer.timeout_triggered")) == 1
    assert not client.of("input_audio_buffer.speech_started")
