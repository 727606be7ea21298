"""Realtime turns encoded while spoken, against the real processes: the speech worker's kept
stretch (`keep_from_ms`/`keep_to_ms` on POST /v1/encode) and a gateway whose VAD turns are
windowed (service/gateway/realtime/turn_encoder.py)."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from service.checkpoints.layout import BASE, EXPRESSIVE
from service.units.tokens import Units
from service.units.windows import keep_units
from tests.support.realtime_client import RATE, Client, open_client, run
from tests.test_realtime import ONE_TURN, metric, silence, speech_pcm

WINDOWS = (
    "--realtime-encode-window-seconds",
    "2",
    "--realtime-encode-left-seconds",
    "2",
    "--realtime-encode-right-seconds",
    "1",
)


def encode(worker: str, audio: bytes, model: str, **params: int | bool) -> httpx.Response:
    return httpx.post(
        worker + "/v1/encode", params={"model": model, **params}, content=audio, timeout=120
    )


@pytest.mark.parametrize("model", [BASE, EXPRESSIVE])
def test_worker_returns_the_kept_stretch(servers, speech_file: Path, model: str) -> None:  # noqa: ANN001
    worker = servers.speech()
    audio = speech_file.read_bytes()
    whole = encode(worker, audio, model)
    assert whole.status_code == 200, whole.text
    units = Units.from_dict(whole.json()["units"])
    kept = encode(worker, audio, model, keep_from_ms=2000, keep_to_ms=6000)
    assert kept.status_code == 200, kept.text
    assert Units.from_dict(kept.json()["units"]) == keep_units(units, 2000, 6000)
    assert len(kept.json()["units"]["hubert"].split()) == 100  # 4 s at 25 units per second
    # Sent ahead of time (a window of a turn still being spoken): other work may go first,
    # the units are the same.
    ahead = encode(worker, audio, model, keep_from_ms=2000, keep_to_ms=6000, ahead=True)
    assert ahead.status_code == 200, ahead.text
    assert ahead.json()["units"] == kept.json()["units"]
    tail = encode(worker, audio, model, keep_from_ms=8000)
    assert Units.from_dict(tail.json()["units"]) == keep_units(units, 8000, None)


def test_realtime_turns_are_encoded_in_the_realtime_precision(  # noqa: ANN001
    servers, speech_file: Path, layout
) -> None:
    # The shared worker runs with the default `realtime_encoder_dtype` (auto): a realtime
    # conversation's turn gets the units of the encoders in that precision, everything else
    # the float32 reference's.
    from service.audio.decode import decode_audio
    from service.cpus import cpu_flags
    from service.speech.pipeline import SpeechStack
    from service.speech_worker.models import realtime_precision

    worker = servers.speech()
    audio = speech_file.read_bytes()
    wav = decode_audio(audio)
    precision = realtime_precision("auto", "float32", "cpu", cpu_flags())
    for model in (BASE, EXPRESSIVE):
        exact = SpeechStack(layout, model).encode_units(wav)
        fast = SpeechStack(layout, model, encoder_dtype=precision).encode_units(wav)
        rest = encode(worker, audio, model)
        realtime = encode(worker, audio, model, realtime=True)
        assert rest.status_code == realtime.status_code == 200, realtime.text
        assert Units.from_dict(rest.json()["units"]) == exact
        assert Units.from_dict(realtime.json()["units"]) == fast


def encodes_by_precision(worker: str) -> dict[str, float]:
    text = httpx.get(worker + "/metrics", timeout=10).text
    name = "spiritlm_speech_encode_inputs_total"
    return {dtype: metric(text, name, f'encoders="{dtype}"') for dtype in ("float32", "bfloat16")}


def test_conversation_turns_go_in_realtime_precision_and_transcriptions_do_not(  # noqa: ANN001
    servers, speech_file: Path
) -> None:
    # A worker whose realtime precision differs from its REST one on any machine, behind a
    # gateway that windows its turns: the windows and tail of a VAD turn and an audio item
    # (connection.py: `_encode_window`, `_encode`) are encoded in bfloat16, a transcription
    # session's turn in float32 (its text is the REST transcription's).
    from service.process import free_port
    from tests.support.realtime_client import ws_url
    from tests.support.scaleout import gateway_argv

    port = free_port()
    worker = f"http://127.0.0.1:{port}"
    argv = servers.speech_argv(port) + ["--realtime-encoder-dtype", "bfloat16"]
    servers.spawn("speech-realtime-bfloat16", argv, worker, "/ready", 300)
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    argv = gateway_argv(port, [servers.lm(BASE)], [worker], *WINDOWS)
    servers.spawn("gateway-realtime-bfloat16", argv, gateway, "/ready", 120)
    pcm = speech_pcm(speech_file)

    async def conversation() -> None:
        client = await open_client(gateway)
        await client.update(
            audio={"input": {"turn_detection": ONE_TURN}}, max_output_tokens=8, temperature=0.0
        )
        audio = {"type": "input_audio", "audio": base64.b64encode(pcm).decode()}
        item = {"type": "message", "role": "user", "content": [audio]}
        await client.send(type="conversation.item.create", item=item)
        await client.append(pcm + silence(3.0))
        await client.until("response.done")
        await client.ws.close()

    async def transcription() -> None:
        ws = await connect(ws_url(gateway) + "&intent=transcription", max_size=None)
        client = Client(ws)
        await client.until("session.created")
        await client.append(pcm + silence(3.0))
        await client.until("conversation.item.input_audio_transcription.completed")
        await client.ws.close()

    # The transcription first: the gateway's ASR exemplars (fewshot.py) are encoded like REST
    # audio on first use, which the conversation's reply transcript would otherwise do.
    before = encodes_by_precision(worker)
    run(transcription())
    middle = encodes_by_precision(worker)
    assert middle["float32"] > before["float32"]
    assert middle["bfloat16"] == before["bfloat16"]
    run(conversation())
    after = encodes_by_precision(worker)
    assert after["bfloat16"] - middle["bfloat16"] >= 3  # the item, the windows, the tail
    assert after["float32"] == middle["float32"]


def test_worker_refuses_stretches_off_the_grid_or_past_the_end(servers, speech_file: Path) -> None:  # noqa: ANN001
    worker = servers.speech()
    audio = speech_file.read_bytes()
    refusals = [
        (EXPRESSIVE, {"keep_from_ms": 1000, "keep_to_ms": 4000}, "multiple of 2000 ms"),
        (BASE, {"keep_from_ms": 50}, "multiple of 40 ms"),
        (BASE, {"keep_to_ms": 4000}, "keep_to_ms needs keep_from_ms"),
        (BASE, {"keep_from_ms": 4000, "keep_to_ms": 4000}, "after keep_from_ms"),
        (BASE, {"keep_from_ms": 0, "keep_to_ms": 12000}, "audio is 9135 ms long"),
    ]
    for model, keep, message in refusals:
        response = encode(worker, audio, model, **keep)
        assert response.status_code == 400, (keep, response.text)
        assert message in response.json()["error"]["message"], response.text


def test_vad_turn_is_encoded_while_spoken(servers, speech_file: Path) -> None:  # noqa: ANN001
    gateway = servers.gateway(BASE, *WINDOWS, name="windows")
    before = httpx.get(gateway + "/metrics", timeout=10).text

    async def scenario() -> Client:
        client = await open_client(gateway)
        await client.update(
            audio={"input": {"turn_detection": ONE_TURN}}, max_output_tokens=16, temperature=0.0
        )
        await client.append(speech_pcm(speech_file) + silence(3.0))
        await client.until("response.done")
        await client.ws.close()
        return client

    client = run(scenario())
    after = httpx.get(gateway + "/metrics", timeout=10).text
    done = client.of("response.done")[0]["response"]
    assert done["status"] in ("completed", "incomplete")
    assert done["usage"]["input_tokens"] > 100
    assert client.audio_samples(done["id"]) > RATE // 10
    # About 9.4 s of turn: windows keeping up to 2, 4, 6 and 8 s are sent while it is spoken,
    # one at a time (the audio arrives faster than real time here, so the last may not be).
    sent = metric(after, "spiritlm_realtime_encode_windows_total") - metric(
        before, "spiritlm_realtime_encode_windows_total"
    )
    assert 1 <= sent <= 4
    waits = "spiritlm_realtime_turn_encode_wait_seconds_count"
    assert metric(after, waits, 'how="windows"') - metric(before, waits, 'how="windows"') == 1
    assert metric(after, waits, 'how="whole"') == metric(before, waits, 'how="whole"')


def test_no_windows_during_a_pause_that_may_end_the_turn(servers, speech_file: Path) -> None:  # noqa: ANN001
    # A pause's candidate turn is encoded from the windows sent before it; windows of the
    # silence after it would be thrown away if the pause ends the turn (connection.py,
    # `_advance_turn_encoding`). Once speech resumes, windows go on.
    gateway = servers.gateway(BASE, *WINDOWS, name="windows")
    windows = "spiritlm_realtime_encode_windows_total"

    def settled() -> float:
        """Windows sent, once no more are coming (each is sent when the last one finished):
        the same count for two seconds."""
        readings: list[float] = []
        deadline = time.monotonic() + 120
        while len(readings) < 3 or len(set(readings[-3:])) > 1:
            assert time.monotonic() < deadline, f"windows still being sent: {readings}"
            readings.append(metric(httpx.get(gateway + "/metrics", timeout=10).text, windows))
            time.sleep(1.0)
        return readings[-1]

    def dropped() -> float:
        text = httpx.get(gateway + "/metrics", timeout=10).text
        return metric(text, "spiritlm_realtime_pause_encodes_dropped_total")

    drops: list[float] = []

    async def scenario() -> tuple[float, float, float, float, Client]:
        client = await open_client(gateway)
        turns = {"type": "server_vad", "silence_duration_ms": 4000}
        await client.update(
            audio={"input": {"turn_detection": turns}}, max_output_tokens=8, temperature=0.0
        )
        before = await asyncio.to_thread(settled)
        await client.append(speech_pcm(speech_file) + silence(1.0))
        paused = await asyncio.to_thread(settled)
        # 9.1 s of speech and 2.5 s of silence would cover a window keeping up to 10 s (it
        # needs 11 s of audio); 1 s of silence did not.
        await client.append(silence(1.5))
        still_paused = await asyncio.to_thread(settled)
        drops.append(await asyncio.to_thread(dropped))
        await client.append(speech_pcm(speech_file))
        resumed = await asyncio.to_thread(settled)
        drops.append(await asyncio.to_thread(dropped))
        await client.append(silence(4.5))
        await client.until("response.done")
        await client.ws.close()
        return before, paused, still_paused, resumed, client

    before, paused, still_paused, resumed, client = run(scenario())
    assert paused > before  # windows went out while the turn was spoken
    assert still_paused == paused  # none during the pause
    assert resumed > still_paused  # speech resumed: windows go on
    # ...and the pause's candidate, encoded in case it ended the turn, is dropped.
    assert drops[1] > drops[0]
    assert client.of("response.done")[0]["response"]["status"] in ("completed", "incomplete")
