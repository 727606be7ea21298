"""A caller that hangs up cancels its one-shot request (service/speech_worker/disconnect.py),
against the real speech worker: an encode queued behind a long one is never run once its caller
left."""

from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np
import soundfile

from service.checkpoints.layout import BASE
from tests.test_realtime import metric

ENCODES = "spiritlm_speech_encode_inputs_total"


def noise_wav(seconds: float) -> bytes:
    samples = np.random.default_rng(3).standard_normal(int(seconds * 16000)) * 0.1
    buffer = io.BytesIO()
    soundfile.write(buffer, samples.astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def encodes(worker: str) -> float:
    return metric(httpx.get(worker + "/metrics", timeout=10).text, ENCODES, f'model="{BASE}"')


def test_an_encode_whose_caller_left_is_not_run(servers) -> None:  # noqa: ANN001
    worker = servers.speech()
    before = encodes(worker)
    long_answer: dict[str, int] = {}

    def long_encode() -> None:
        response = httpx.post(
            worker + "/v1/encode", params={"model": BASE}, content=noise_wav(300), timeout=300
        )
        long_answer["status"] = response.status_code

    started = time.perf_counter()
    thread = threading.Thread(target=long_encode)
    thread.start()
    time.sleep(0.5)  # the long encode holds the inference thread (a few seconds here)
    try:
        httpx.post(worker + "/v1/encode", params={"model": BASE}, content=noise_wav(1), timeout=0.5)
        raise AssertionError("the short encode was answered while the long one ran")
    except httpx.TimeoutException:
        pass  # the caller hangs up while its encode waits for the inference thread
    thread.join()
    assert long_answer["status"] == 200
    assert time.perf_counter() - started > 1.0  # the long encode did outlast the short one
    time.sleep(0.5)
    # Only the long encode ran: the one whose caller left was dropped from the queue.
    assert encodes(worker) - before == 1
