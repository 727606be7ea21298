"""Hostile audio against the real processes: bounded memory, bounded units, bounded totals.

Each attack runs against the session's gateway and speech worker (tests/support/servers.py)
while the peak RSS of both processes is measured (Linux's VmHWM, reset through clear_refs just
before) and the gateway's /health is timed concurrently:

* 599 s of 192 kHz silence as a 360 KB FLAC, under max_audio_seconds, to /v1/speech/tokenize;
* /v1/speech/detokenize with 100,000 units (refused by name, at the gateway and at the worker)
  and with the largest accepted number of units;
* /v1/generate and chat with many audio inputs, each within max_audio_seconds but together past
  max_request_audio_seconds: refused by name before the speech worker encodes any of them.

The limits are docs/security.md#limits; the bounds asserted are issue-level behaviour bounds
(peak RSS growth under 600 MB per process, /health under 1 s), not timings of this machine.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from tests.support.servers import Servers

GROWTH_LIMIT_MB = 600
HEALTH_LIMIT_S = 1.0
MAX_DETOKENIZE_UNITS = 2500  # the default of the setting (service/gateway/settings.py)


# ---- processes and measurements --------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(servers: Servers) -> str:
    return servers.gateway()


@pytest.fixture(scope="module")
def speech(servers: Servers, gateway: str) -> str:
    return servers.speech()


def pid_of(servers: Servers, url: str) -> int:
    for child, child_url in servers.started.values():
        if child_url == url and child.popen is not None:
            return child.popen.pid
    raise AssertionError(f"no process of this session serves {url}")


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} missing from /proc/{pid}/status")


@dataclass
class Watch:
    """Peak RSS growth of some processes and the gateway's /health latencies, over a block."""

    pids: dict[str, int]
    health_url: str
    baseline_kb: dict[str, int] = field(default_factory=dict)
    growth_mb: dict[str, float] = field(default_factory=dict)
    health_seconds: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)

    def assert_bounded(self) -> None:
        growth = ", ".join(f"{name} +{mb:.0f} MB" for name, mb in self.growth_mb.items())
        worst = max(self.health_seconds, default=float("nan"))
        print(f"peak RSS growth: {growth}; slowest /health {worst:.3f} s")  # for the report
        for name, growth in self.growth_mb.items():
            assert growth < GROWTH_LIMIT_MB, (name, f"{growth:.0f} MB", self.growth_mb)
        assert not self.health_failures, self.health_failures
        assert self.health_seconds, "no /health answer while the request ran"
        assert max(self.health_seconds) < HEALTH_LIMIT_S, max(self.health_seconds)


@contextmanager
def watching(pids: dict[str, int], gateway: str) -> Iterator[Watch]:
    watch = Watch(pids, f"{gateway}/health")
    for name, pid in pids.items():
        # "5" resets the peak (VmHWM) to the current RSS, so the peak below is this block's.
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        watch.baseline_kb[name] = _status_kb(pid, "VmRSS")
    stop = threading.Event()

    def probe_health() -> None:
        # At least one probe, even when the request is over before the thread first runs (a
        # refusal can take a few milliseconds): the loop tests `stop` after probing.
        with httpx.Client(timeout=10.0) as client:
            while True:
                started = time.perf_counter()
                try:
                    status = client.get(watch.health_url).status_code
                except httpx.HTTPError as error:
                    watch.health_failures.append(repr(error))
                else:
                    watch.health_seconds.append(time.perf_counter() - started)
                    if status != 200:
                        watch.health_failures.append(f"/health {status}")
                if stop.wait(0.1):
                    break

    prober = threading.Thread(target=probe_health, daemon=True)
    prober.start()
    try:
        yield watch
    finally:
        stop.set()
        prober.join(timeout=15)
        for name, pid in pids.items():
            peak = _status_kb(pid, "VmHWM")
            watch.growth_mb[name] = (peak - watch.baseline_kb[name]) / 1024


def both(servers: Servers, gateway: str, speech: str) -> dict[str, int]:
    return {"gateway": pid_of(servers, gateway), "speech worker": pid_of(servers, speech)}


def encode_count(speech: str) -> float:
    """Encodes the speech worker has done (its metrics), to show a refusal came before any."""
    text = httpx.get(f"{speech}/metrics", timeout=10).text
    counts = re.findall(r"^spiritlm_speech_encode_seconds_count\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return sum(float(count) for count in counts)


def assert_refused(response: httpx.Response, param: str, setting: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert setting in error["message"], error


# ---- audio -----------------------------------------------------------------------------------


def silence_flac(seconds: float, rate: int) -> bytes:
    """Silence as 16-bit FLAC, written a block at a time (the file is tiny, the signal is not)."""
    total = round(seconds * rate)
    block = np.zeros(rate * 10, dtype=np.int16)
    buffer = io.BytesIO()
    with soundfile.SoundFile(
        buffer, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16"
    ) as out:
        for start in range(0, total, block.size):
            out.write(block[: min(block.size, total - start)])
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- high-rate upload ------------------------------------------------------------------------


def test_high_rate_upload_is_decoded_in_bounded_memory(
    servers: Servers, gateway: str, speech: str
) -> None:
    """599 s at 192 kHz (under max_audio_seconds): once 2 GB in each process, now bounded."""
    flac = silence_flac(599, 192_000)
    assert len(flac) < 1024 * 1024
    with watching(both(servers, gateway, speech), gateway) as watch:
        response = httpx.post(
            f"{gateway}/v1/speech/tokenize",
            content=flac,
            headers={"content-type": "audio/flac"},
            timeout=600,
        )
    assert response.status_code == 200, response.text
    assert response.json()["seconds"] == pytest.approx(599, abs=0.01)
    watch.assert_bounded()


# ---- detokenize units ------------------------------------------------------------------------


def many_units(count: int) -> str:
    rng = np.random.default_rng(count)
    return " ".join(str(unit) for unit in rng.integers(0, 100, size=count))


@pytest.mark.parametrize("shape", ["tokens", "units"])
def test_detokenize_over_the_unit_limit_is_refused_by_the_gateway(
    servers: Servers, gateway: str, speech: str, shape: str
) -> None:
    units = many_units(100_000)
    if shape == "tokens":
        body, param = {"tokens": "".join(f"[Hu{u}]" for u in units.split())}, "tokens"
    else:
        body, param = {"units": {"hubert": units}}, "units.hubert"
    with watching(both(servers, gateway, speech), gateway) as watch:
        started = time.perf_counter()
        response = httpx.post(f"{gateway}/v1/speech/detokenize", json=body, timeout=120)
        elapsed = time.perf_counter() - started
    assert_refused(response, param, "max_detokenize_units")
    assert "100000" in response.json()["error"]["message"]
    # Refused before any synthesis: 100,000 units took 200 s of vocoder time before the limit.
    assert elapsed < 20, elapsed
    watch.assert_bounded()


@pytest.mark.parametrize("shape", ["tokens", "units"])
def test_decode_over_the_unit_limit_is_refused_by_the_speech_worker(
    speech: str, shape: str
) -> None:
    units = many_units(MAX_DETOKENIZE_UNITS + 1)
    if shape == "tokens":
        body, param = {"tokens": "".join(f"[Hu{u}]" for u in units.split())}, "tokens"
    else:
        body, param = {"units": {"hubert": [int(u) for u in units.split()]}}, "units.hubert"
    response = httpx.post(f"{speech}/v1/decode", json=body, timeout=120)
    assert_refused(response, param, "max_detokenize_units")
    assert f"limit of {MAX_DETOKENIZE_UNITS}" in response.json()["error"]["message"]


def test_detokenize_of_the_largest_accepted_request_is_bounded(
    servers: Servers, gateway: str, speech: str
) -> None:
    body = {"units": {"hubert": many_units(MAX_DETOKENIZE_UNITS)}, "response_format": "wav"}
    with watching(both(servers, gateway, speech), gateway) as watch:
        response = httpx.post(f"{gateway}/v1/speech/detokenize", json=body, timeout=600)
    assert response.status_code == 200, response.text
    wav, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 16000 and len(wav) > MAX_DETOKENIZE_UNITS * 640  # at least a frame per unit
    watch.assert_bounded()


# ---- audio inputs of one request together ----------------------------------------------------


@pytest.fixture(scope="module")
def hundred_seconds() -> str:
    return b64(silence_flac(100, 16_000))


def test_generate_audio_inputs_over_the_total_are_refused_before_encoding(
    gateway: str, speech: str, hundred_seconds: str
) -> None:
    """Seven inputs of 100 s: each within max_audio_seconds, 700 s together (limit 600 s)."""
    inputs = [{"type": "speech", "audio": hundred_seconds} for _ in range(7)]
    before = encode_count(speech)
    response = httpx.post(
        f"{gateway}/v1/generate", json={"inputs": inputs, "max_tokens": 4}, timeout=300
    )
    assert_refused(response, "inputs[6].audio", "max_request_audio_seconds")
    assert encode_count(speech) == before


def test_chat_audio_inputs_over_the_total_are_refused_before_encoding(
    gateway: str, speech: str, hundred_seconds: str
) -> None:
    part = {"type": "input_audio", "input_audio": {"data": hundred_seconds, "format": "flac"}}
    messages = [{"role": "user", "content": [part, part, part]} for _ in range(3)]
    before = encode_count(speech)
    response = httpx.post(
        f"{gateway}/v1/chat/completions",
        json={"model": "spirit-lm-base-7b", "messages": messages, "max_tokens": 4},
        timeout=300,
    )
    assert_refused(response, "messages[2].content[0].input_audio.data", "max_request_audio_seconds")
    assert encode_count(speech) == before


def test_one_audio_input_over_max_audio_seconds_names_that_setting(
    gateway: str, speech: str
) -> None:
    long_input = b64(silence_flac(601, 8_000))
    before = encode_count(speech)
    response = httpx.post(
        f"{gateway}/v1/generate",
        json={"inputs": [{"type": "speech", "audio": long_input}], "max_tokens": 4},
        timeout=300,
    )
    assert_refused(response, "inputs[0].audio", "max_audio_seconds")
    assert encode_count(speech) == before


def test_audio_inputs_within_the_total_are_encoded(
    gateway: str, speech: str, hundred_seconds: str
) -> None:
    inputs = [{"type": "speech", "audio": hundred_seconds} for _ in range(2)]
    before = encode_count(speech)
    response = httpx.post(
        f"{gateway}/v1/generate",
        json={"inputs": inputs, "max_tokens": 4, "audio": False},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    assert encode_count(speech) == before + 2
