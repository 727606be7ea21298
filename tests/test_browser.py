"""The voice page in real headless Chromium: fake microphone (the speech file) -> reply played.

Chromium (Debian's) and playwright (in .cache/browser-venv) come from scripts/install_browser.sh;
the test skips, saying why, only when they cannot be installed. Chromium's fake capture device
plays a WAV file as the microphone (in a loop); the page streams it to WS /v1/realtime, the
server's VAD ends the turn, and the page plays the spoken reply. The page counts what it
received and what finished playing on `window.spiritlm`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from service.checkpoints.layout import BASE
from tests.support.paths import REPO

BROWSER_PYTHON = REPO / ".cache" / "browser-venv" / "bin" / "python"
DRIVER = REPO / "tests" / "support" / "browser_driver.py"
REPLY_TIMEOUT = 240


@pytest.fixture(scope="module")
def browser_ready() -> None:
    install = subprocess.run(
        ["bash", str(REPO / "scripts" / "install_browser.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if install.returncode != 0 or not BROWSER_PYTHON.is_file():
        reason = (install.stderr or install.stdout).strip().splitlines()[-3:]
        pytest.skip("chromium/playwright could not be installed: " + " | ".join(reason))


def microphone_file(speech_file: Path, target: Path) -> Path:
    """The speech file then 25 s of silence (the capture loops), as 48 kHz pcm16 WAV."""
    wave, rate = soundfile.read(str(speech_file), dtype="float32")
    wave = resample_poly(wave, 3, 1) if rate == 16000 else wave
    samples = np.concatenate([wave, np.zeros(25 * 48000, dtype=np.float32)])
    soundfile.write(str(target), samples, 48000, subtype="PCM_16")
    return target


def test_voice_page_hears_the_microphone_and_plays_a_reply(
    browser_ready: None,
    servers,
    speech_file: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    gateway = servers.gateway(BASE)
    microphone = microphone_file(speech_file, tmp_path / "microphone.wav")
    # One turn per pass of the file (its longest pause is 1.6 s), a short reply.
    url = f"{gateway}/?silence_ms=2000&max_tokens=60"
    screenshot = tmp_path / "page.png"
    run = subprocess.run(
        [
            str(BROWSER_PYTHON),
            str(DRIVER),
            url,
            str(microphone),
            str(screenshot),
            str(REPLY_TIMEOUT),
        ],
        capture_output=True,
        text=True,
        timeout=REPLY_TIMEOUT + 120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in stats.items() if k != "events"}, indent=1), file=sys.stderr)
    assert stats["sessionId"].startswith("sess_")
    assert stats["sentSamples"] > 24000  # more than a second of microphone audio went out
    assert stats["speechStarted"] >= 1 and stats["speechStopped"] >= 1
    assert {"completed", "incomplete"} & set(stats["responsesDone"])
    assert stats["receivedSamples"] > 0
    assert stats["playedBuffers"] > 0 and stats["playedSamples"] > 0
    assert stats["firstAudioMs"] is not None
    assert "user" in stats["bubbles"] and "assistant" in stats["bubbles"]
    assert not stats["errors"], stats["errors"]
    assert screenshot.stat().st_size > 0


def test_api_reference_renders_without_internet(browser_ready: None, servers) -> None:  # noqa: ANN001
    """/docs loads Swagger UI from the gateway itself (service/gateway/docs.py): with every other
    origin unreachable, it renders the operations, and it never asked anywhere else."""
    gateway = servers.gateway(BASE)
    run = subprocess.run(
        [
            str(BROWSER_PYTHON),
            str(REPO / "tests" / "support" / "docs_driver.py"),
            f"{gateway}/docs",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    page = json.loads(run.stdout.strip().splitlines()[-1])
    assert page["outside"] == [] and page["failed"] == [], page
    assert "spiritlm-serve" in page["title"], page
    paths = set(page["operations"])
    assert {
        "/v1/chat/completions",
        "/v1/audio/transcriptions",
        "/v1/realtime/client_secrets",
    } <= paths, page
    assert not page["errors"], page


def test_voice_page_on_a_keyed_gateway_uses_a_client_secret(
    browser_ready: None,
    servers,
    speech_file: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """With API keys set, the page holds no key: it opens its session with a client secret made
    by the page's backend (here the test, with the key) and given in the URL's fragment."""
    key = "replica-api-key"  # the same keyed gateway as tests/test_client_secrets.py's
    keyed = ("--api-keys", key, "--signing-key", "replicas-share-this-key")
    gateway = servers.gateway(BASE, *keyed, name="keyed-a")
    made = httpx.post(
        f"{gateway}/v1/realtime/client_secrets",
        json={"session": {"type": "realtime", "model": BASE, "instructions": "Be brief."}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    made.raise_for_status()
    secret = made.json()["value"]
    microphone = microphone_file(speech_file, tmp_path / "microphone.wav")
    url = f"{gateway}/?silence_ms=2000&max_tokens=60#secret={secret}"
    run = subprocess.run(
        [str(BROWSER_PYTHON), str(DRIVER), url, str(microphone), str(tmp_path / "page.png")]
        + [str(REPLY_TIMEOUT)],
        capture_output=True,
        text=True,
        timeout=REPLY_TIMEOUT + 120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads(run.stdout.strip().splitlines()[-1])
    assert stats["sessionId"].startswith("sess_"), stats.get("closeReason")
    assert stats["inputLevel"] > 0.2  # the meter moved with the speech
    assert {"completed", "incomplete"} & set(stats["responsesDone"])
    assert "user" in stats["bubbles"] and "assistant" in stats["bubbles"]
    roles = [t["role"] for t in stats["transcripts"]]
    assert "user" in roles and "assistant" in roles
    assert not stats["errors"], stats["errors"]
    # The secret is a WebSocket credential only: REST routes refuse it.
    refused = httpx.get(
        f"{gateway}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )
    assert refused.status_code == 401
