"""Realtime transcription sessions, input transcription deltas and G.711 sessions, against the
real processes (vLLM, speech worker, gateway); plus unit tests of the configuration rules.

The tiny random LM's transcripts are arbitrary text, so a session's transcript is compared with
what /v1/audio/transcriptions answers for exactly the audio the session committed, not with
English. One test drives the session with the official `openai` SDK (its GA realtime client);
the others speak raw events (tests/support/realtime_client.py).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from openai import AsyncOpenAI
from scipy.signal import resample_poly
from websockets.asyncio.client import connect

from service.audio.g711 import ulaw_decode, ulaw_encode
from service.checkpoints.layout import BASE
from service.gateway.realtime.config import SessionConfig
from service.gateway.realtime.protocol import (
    BETA,
    GA,
    ProtocolError,
    SessionIn,
    parse_client_event,
)
from service.gateway.realtime.transcription import trimmed
from tests.support.realtime_client import Client, run, ws_url

SPEECH_RATE = 16000
# A silence this long ends the turn only after the whole utterance (the file pauses for up to
# 1.6 s), and a prefix this long makes the turn start at the first sample appended.
ONE_WHOLE_TURN = {"type": "server_vad", "silence_duration_ms": 2000, "prefix_padding_ms": 5000}


@pytest.fixture(scope="module")
def gateway(servers) -> str:  # noqa: ANN001
    return servers.gateway(BASE)


def speech(path: Path, rate: int = SPEECH_RATE) -> np.ndarray:
    """The test speech file as int16 samples at `rate` (resampled with scipy)."""
    wave, file_rate = soundfile.read(str(path), dtype="float32")
    assert file_rate == SPEECH_RATE
    if rate != file_rate:
        wave = resample_poly(wave, rate, file_rate)
    return (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2")


def wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def rest_transcript(gateway: str, samples: np.ndarray, rate: int) -> str:
    answer = httpx.post(
        gateway + "/v1/audio/transcriptions",
        files={"file": ("turn.wav", wav(samples, rate), "audio/wav")},
        data={"model": BASE},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["text"]


def chunks(data: bytes, size: int) -> list[str]:
    return [base64.b64encode(data[i : i + size]).decode() for i in range(0, len(data), size)]


# ---- with the official SDK ----------------------------------------------------------------


def test_sdk_transcription_session_streams_deltas_and_never_responds(
    gateway: str, speech_file: Path
) -> None:
    samples = speech(speech_file)
    audio = samples.tobytes() + bytes(3 * SPEECH_RATE * 2)

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        client = AsyncOpenAI(base_url=gateway + "/v1", api_key="unused")
        seen: list[dict[str, Any]] = []
        async with client.realtime.connect(
            model=BASE, extra_query={"intent": "transcription"}
        ) as connection:
            created = (await connection.recv()).model_dump(warnings=False)
            await connection.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": SPEECH_RATE},
                            "turn_detection": ONE_WHOLE_TURN,
                        }
                    },
                }
            )
            for piece in chunks(audio, SPEECH_RATE // 10 * 2):
                await connection.input_audio_buffer.append(audio=piece)
            async for event in connection:
                seen.append(event.model_dump(warnings=False))
                if event.type == "conversation.item.input_audio_transcription.completed":
                    break
            await connection.send({"type": "response.create", "event_id": "no-reply"})
            async for event in connection:
                seen.append(event.model_dump(warnings=False))
                if event.type == "error":
                    break
        return created, seen

    created, seen = run(scenario())
    session = created["session"]
    assert created["type"] == "session.created"
    assert session["type"] == "transcription"
    assert session["audio"]["input"]["transcription"]["model"] == BASE
    types = [event["type"] for event in seen]
    updated = seen[types.index("session.updated")]["session"]
    assert updated["type"] == "transcription"
    assert updated["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": SPEECH_RATE}
    assert updated["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 2000
    for name in ("speech_started", "speech_stopped", "committed"):
        assert types.count(f"input_audio_buffer.{name}") == 1, types
    stopped = seen[types.index("input_audio_buffer.speech_stopped")]
    committed = seen[types.index("input_audio_buffer.committed")]
    deltas = [e for e in seen if e["type"].endswith("input_audio_transcription.delta")]
    completed = seen[types.index("conversation.item.input_audio_transcription.completed")]
    assert deltas, types
    assert {e["item_id"] for e in deltas} == {committed["item_id"], completed["item_id"]}
    assert completed["transcript"] == "".join(e["delta"] for e in deltas)
    assert types.index("input_audio_buffer.committed") < types.index(deltas[0]["type"])
    # Never a response: no response.* event; response.create is refused, named.
    assert not [name for name in types if name.startswith("response.")]
    error = seen[-1]["error"]
    assert error["event_id"] == "no-reply"
    assert "response.create" in error["message"] and "transcription" in error["message"]
    # The committed turn is the audio from the first sample to where the silence began;
    # the REST route transcribes the same audio to the same text.
    end = stopped["audio_end_ms"] * SPEECH_RATE // 1000
    assert completed["usage"] == {"type": "duration", "seconds": round(end / SPEECH_RATE, 3)}
    assert completed["transcript"] == rest_transcript(gateway, samples[:end], SPEECH_RATE)


# ---- raw events ---------------------------------------------------------------------------


def test_session_update_switches_to_transcription_and_refuses_responses(
    gateway: str, speech_file: Path
) -> None:
    samples = speech(speech_file)[: 3 * SPEECH_RATE]

    async def scenario() -> Client:
        client = Client(await connect(ws_url(gateway), max_size=None))
        await client.until("session.created")
        await client.send(
            type="session.update",
            event_id="to-transcription",
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": SPEECH_RATE},
                        "turn_detection": None,
                    }
                },
            },
        )
        await client.until("session.updated")
        await client.send(
            type="session.update", event_id="instr", session={"instructions": "Be brief"}
        )
        await client.until("error")
        for piece in chunks(samples.tobytes(), 3200):
            await client.send(type="input_audio_buffer.append", audio=piece)
        await client.send(type="input_audio_buffer.commit")
        await client.until("conversation.item.input_audio_transcription.completed")
        await client.send(
            type="conversation.item.create",
            event_id="item",
            item={"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        )
        await client.until("error")
        await client.ws.close()
        return client

    client = run(scenario())
    session = client.of("session.updated")[0]["session"]
    assert session["type"] == "transcription"
    assert session["audio"]["input"]["turn_detection"] is None
    assert "output" not in session["audio"]
    errors = {e["error"]["event_id"]: e["error"] for e in client.of("error")}
    assert errors["instr"]["param"] == "session.instructions"
    assert errors["item"]["param"] == "type"
    assert "conversation.item.create" in errors["item"]["message"]
    deltas = "".join(
        e["delta"] for e in client.of("conversation.item.input_audio_transcription.delta")
    )
    completed = client.of("conversation.item.input_audio_transcription.completed")[0]
    assert completed["transcript"] == deltas
    assert completed["transcript"] == rest_transcript(gateway, samples, SPEECH_RATE)
    assert not [e for e in client.seen if e["type"].startswith("response.")]


def test_beta_transcription_session_events(gateway: str) -> None:
    async def scenario() -> Client:
        url = ws_url(gateway) + "&intent=transcription"
        ws = await connect(url, max_size=None, additional_headers={"OpenAI-Beta": "realtime=v1"})
        client = Client(ws)
        await client.until("transcription_session.created")
        await client.send(
            type="transcription_session.update",
            session={"input_audio_format": "g711_alaw", "turn_detection": None},
        )
        await client.until("transcription_session.updated")
        await client.ws.close()
        return client

    client = run(scenario())
    created = client.of("transcription_session.created")[0]["session"]
    updated = client.of("transcription_session.updated")[0]["session"]
    assert created["object"] == updated["object"] == "realtime.transcription_session"
    assert created["input_audio_format"] == "pcm16"
    assert updated["input_audio_format"] == "g711_alaw"
    assert updated["input_audio_sample_rate"] == 8000
    assert updated["turn_detection"] is None


def test_unknown_intent_is_refused(gateway: str) -> None:
    async def scenario() -> tuple[dict[str, Any], int | None]:
        ws = await connect(ws_url(gateway) + "&intent=translation", max_size=None)
        client = Client(ws)
        error = await client.until("error")
        await ws.wait_closed()
        return error, ws.close_code

    error, code = run(scenario())
    assert error["error"]["param"] == "intent"
    assert code == 1008


def test_g711_session_in_and_out_matches_pcm16_at_8khz(gateway: str, speech_file: Path) -> None:
    """The same turn sent as u-law and as the pcm16 it decodes to gets the same greedy reply:
    the u-law deltas decode to exactly the companded pcm16 reply (8 kHz, the same length)."""
    wire = ulaw_encode(speech(speech_file, 8000)[: 3 * 8000]) + bytes([0xFF]) * (3 * 8000)
    decoded = ulaw_decode(wire).astype("<i2").tobytes()

    async def session(fmt: dict[str, Any], audio: bytes, step: int) -> Client:
        client = Client(await connect(ws_url(gateway), max_size=None))
        await client.until("session.created")
        detection = {**ONE_WHOLE_TURN, "silence_duration_ms": 1000}
        await client.update(
            temperature=0.0,
            max_output_tokens=24,
            audio={
                "input": {"format": fmt, "turn_detection": detection, "transcription": {}},
                "output": {"format": fmt},
            },
        )
        for piece in chunks(audio, step):
            await client.send(type="input_audio_buffer.append", audio=piece)
        await client.until("response.done")
        if not client.of("conversation.item.input_audio_transcription.completed"):
            await client.until("conversation.item.input_audio_transcription.completed")
        await client.ws.close()
        return client

    async def scenario() -> tuple[Client, Client]:
        ulaw = await session({"type": "audio/pcmu"}, wire, 800)
        pcm = await session({"type": "audio/pcm", "rate": 8000}, decoded, 1600)
        return ulaw, pcm

    ulaw, pcm = run(scenario())
    session_ulaw = ulaw.of("session.updated")[0]["session"]
    assert session_ulaw["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session_ulaw["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    for client in (ulaw, pcm):
        assert len(client.of("input_audio_buffer.committed")) == 1
    assert (
        ulaw.of("input_audio_buffer.speech_stopped")[0]["audio_end_ms"]
        == (pcm.of("input_audio_buffer.speech_stopped")[0]["audio_end_ms"])
    )
    done = ulaw.of("response.done")[0]["response"]
    assert done["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    ulaw_audio = b"".join(
        base64.b64decode(e["delta"]) for e in ulaw.of("response.output_audio.delta")
    )
    pcm_audio = b"".join(
        base64.b64decode(e["delta"]) for e in pcm.of("response.output_audio.delta")
    )
    assert len(pcm_audio) > 800  # a spoken reply of more than 50 ms
    assert len(ulaw_audio) == len(pcm_audio) // 2  # one byte per 8 kHz sample
    expected = ulaw_decode(ulaw_encode(np.frombuffer(pcm_audio, dtype="<i2")))
    assert np.array_equal(ulaw_decode(ulaw_audio), expected)
    # Input transcription deltas in a conversation session add up to the transcript.
    for client in (ulaw, pcm):
        deltas = client.of("conversation.item.input_audio_transcription.delta")
        completed = client.of("conversation.item.input_audio_transcription.completed")[0]
        assert "".join(e["delta"] for e in deltas) == completed["transcript"]
    assert (
        ulaw.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
        == pcm.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    )


# ---- unit tests of the configuration ------------------------------------------------------


def update(config: SessionConfig, **session: Any) -> SessionConfig:
    event = parse_client_event(json.dumps({"type": "session.update", "session": session}))
    return config.updated(event.session, [], "evt")


def test_transcription_config_rules() -> None:
    base = SessionConfig(model=BASE, speaker=2)
    switched = update(base, type="transcription")
    assert switched.type == "transcription"
    assert switched.transcription == {"model": BASE, "language": None, "prompt": None}
    rendered = switched.render(GA, "sess_1", 0)
    assert rendered["type"] == "transcription" and "output_modalities" not in rendered
    assert "create_response" not in rendered["audio"]["input"]["turn_detection"]
    assert switched.render(BETA, "sess_1", 0)["object"] == "realtime.transcription_session"
    for field, value, param in [
        ("instructions", "x", "session.instructions"),
        ("voice", "alloy", "session.voice"),
        ("audio", {"output": {"voice": "alloy"}}, "session.audio.output"),
        ("audio", {"input": {"transcription": None}}, "session.audio.input.transcription"),
        ("type", "translation", "session.type"),
        (
            "audio",
            {"input": {"transcription": {"model": "whisper-1", "language": "en"}}},
            "session.audio.input.transcription.language",
        ),
        (
            "audio",
            {"input": {"turn_detection": {"type": "server_vad", "create_response": True}}},
            "session.audio.input.turn_detection.create_response",
        ),
    ]:
        with pytest.raises(ProtocolError) as refused:
            update(switched, **{field: value})
        assert refused.value.param == param
        assert refused.value.event_id == "evt"
    assert update(switched, type="realtime").type == "realtime"


def test_g711_config() -> None:
    base = SessionConfig(model=BASE, speaker=2)
    ga = update(base, audio={"input": {"format": {"type": "audio/pcma"}}})
    assert (ga.input_format, ga.input_rate, ga.output_format) == ("g711_alaw", 8000, "pcm16")
    beta = update(base, input_audio_format="g711_ulaw", output_audio_format="g711_ulaw")
    assert (beta.input_rate, beta.output_rate) == (8000, 8000)
    assert beta.render(BETA, "s", 0)["output_audio_format"] == "g711_ulaw"
    assert beta.render(GA, "s", 0)["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    back = update(beta, input_audio_format="pcm16")
    assert (back.input_format, back.input_rate) == ("pcm16", 24000)
    with pytest.raises(ProtocolError) as refused:
        update(base, audio={"output": {"format": {"type": "audio/pcmu", "rate": 24000}}})
    assert refused.value.param == "session.audio.output.format.rate"


def test_trimmed_deltas_add_up_to_the_stripped_transcript() -> None:
    async def collect(pieces: list[str]) -> list[str]:
        async def source() -> Any:
            for piece in pieces:
                yield piece

        return [delta async for delta in trimmed(source())]

    pieces = [" ", "  Hel", "lo ", " ", "wor", "ld \n", " "]
    deltas = run(collect(pieces))
    assert "".join(deltas) == "".join(pieces).strip() == "Hello  world"
    assert all(deltas)
    assert run(collect([" ", "\n"])) == []


def test_transcription_session_update_parses() -> None:
    event = parse_client_event(
        '{"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}}'
    )
    assert isinstance(event.session, SessionIn)
    assert event.session.input_audio_format == "g711_ulaw"
