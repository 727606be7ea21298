"""POST /v1/generate, auth, body limits and metrics, against the real LM worker (vLLM), speech
worker and gateway processes."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import soundfile
from prometheus_client.parser import text_string_to_metric_families

from service.checkpoints.layout import BASE, CheckpointLayout
from service.lm.tokenizer import SpiritTokenizer
from service.units.tokens import SPEECH_TOKEN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(servers) -> str:  # noqa: ANN001
    return servers.gateway(BASE)


@pytest.fixture(scope="module")
def http(gateway: str) -> httpx.Client:
    with httpx.Client(base_url=gateway, timeout=120.0) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer(layout: CheckpointLayout) -> SpiritTokenizer:
    return SpiritTokenizer.from_dir(layout.lm_dir(BASE))


@pytest.fixture(scope="module")
def speech_b64(speech_file: Path) -> str:
    return base64.b64encode(speech_file.read_bytes()).decode()


@pytest.fixture(scope="module")
def speech_tokens(servers, speech_file: Path) -> str:  # noqa: ANN001
    """The file's token string as the speech worker encodes it (the gateway's source)."""
    response = httpx.post(
        servers.speech() + "/v1/encode",
        params={"model": BASE},
        content=speech_file.read_bytes(),
        timeout=120.0,
    )
    response.raise_for_status()
    return response.json()["tokens"]


def generate(http: httpx.Client, **body: object) -> dict:
    response = http.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(http: httpx.Client, body: dict) -> list[dict]:
    events: list[dict] = []
    with http.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        events.append(json.loads(line[len("data: ") :]))
    return events


def streamed_segments(events: list[dict]) -> list[dict]:
    """Per segment index: kind, concatenated text deltas, token pieces and audio bytes."""
    segments: dict[int, dict] = {}
    for event in events:
        if event["type"] == "segment.start":
            segments[event["index"]] = {"kind": event["kind"], "text": "", "tokens": "", "pcm": b""}
        elif event["type"] == "text.delta":
            segments[event["index"]]["text"] += event["delta"]
        elif event["type"] == "speech.tokens":
            segments[event["index"]]["tokens"] += event["tokens"]
        elif event["type"] == "audio.delta":
            segments[event["index"]]["pcm"] += base64.b64decode(event["audio"])
    return [segments[index] for index in sorted(segments)]


# ---- generation ---------------------------------------------------------------------------


def test_text_to_text(http: httpx.Client, tokenizer: SpiritTokenizer) -> None:
    result = generate(
        http,
        inputs=[{"type": "text", "text": "The largest country in the world is"}],
        output_modality="text",
        max_tokens=12,
        temperature=0,
    )
    assert result["object"] == "spiritlm.generation"
    assert result["model"] == BASE
    assert result["prompt"] == "[Text]The largest country in the world is"
    assert result["prompt_token_ids"] == tokenizer.encode(result["prompt"])
    assert 1 <= len(result["output_token_ids"]) <= 12
    assert result["usage"]["completion_tokens"] == len(result["output_token_ids"])
    assert result["usage"]["prompt_tokens"] == len(result["prompt_token_ids"])
    assert all(segment["type"] == "text" for segment in result["segments"])
    # TEXT output: the ids vLLM was allowed to produce are text ids only.
    assert not SPEECH_TOKEN.search(tokenizer.decode_ids(result["output_token_ids"]))


def test_speech_to_speech_from_a_flac_upload(
    http: httpx.Client, speech_b64: str, speech_tokens: str, tokenizer: SpiritTokenizer
) -> None:
    result = generate(
        http,
        inputs=[{"type": "speech", "audio": speech_b64}],
        output_modality="speech",
        max_tokens=40,
        temperature=0,
    )
    assert result["prompt"] == "[Speech]" + speech_tokens
    assert result["prompt_token_ids"] == tokenizer.encode(result["prompt"])
    assert len(result["output_token_ids"]) == 40
    assert result["finish_reason"] == "length"
    [segment] = result["segments"]
    assert segment["type"] == "speech"
    assert SPEECH_TOKEN.fullmatch(segment["tokens"][: segment["tokens"].index("]") + 1])
    wav, rate = soundfile.read(io.BytesIO(base64.b64decode(segment["audio"])))
    assert rate == segment["sample_rate"] == 16000
    assert len(wav) > 0
    assert segment["seconds"] == pytest.approx(len(wav) / rate, abs=1e-3)


def test_arbitrary_output_keeps_segment_order(
    http: httpx.Client, speech_tokens: str, tokenizer: SpiritTokenizer
) -> None:
    result = generate(
        http,
        inputs=[
            {"type": "text", "text": "Listen:"},
            {"type": "speech", "tokens": speech_tokens},
        ],
        output_modality="arbitrary",
        max_tokens=30,
        temperature=0,
    )
    assert result["prompt"] == "[Text]Listen:[Speech]" + speech_tokens
    assert result["prompt_token_ids"] == tokenizer.encode(result["prompt"])
    for segment in result["segments"]:
        assert segment["type"] in ("text", "speech")
        if segment["type"] == "speech":
            assert segment["tokens"].startswith("[")


@pytest.mark.parametrize(
    "body",
    [
        {
            "inputs": [{"type": "text", "text": "Once upon a time"}],
            "output_modality": "text",
            "max_tokens": 16,
        },
        {"prompt": "[Text]Hello there[Speech]", "output_modality": "speech", "max_tokens": 40},
    ],
    ids=["text", "speech"],
)
def test_stream_deltas_add_up_to_the_response(http: httpx.Client, body: dict) -> None:
    body = {**body, "temperature": 0}
    whole = generate(http, **body)
    events = sse_events(http, body)
    done = [event for event in events if event["type"] == "done"]
    assert len(done) == 1 and events[-1]["type"] == "done"
    assert done[0]["output_token_ids"] == whole["output_token_ids"]
    assert done[0]["prompt_token_ids"] == whole["prompt_token_ids"]
    kept = [s for s in streamed_segments(events) if s["text"] or s["tokens"]]
    assert [s["kind"] for s in kept] == [s["type"] for s in whole["segments"]]
    for streamed, segment in zip(kept, whole["segments"], strict=True):
        if segment["type"] == "text":
            assert streamed["text"] == segment["text"]
        else:
            assert streamed["tokens"] == segment["tokens"]
            wav, _ = soundfile.read(io.BytesIO(base64.b64decode(segment["audio"])), dtype="int16")
            assert len(streamed["pcm"]) == 2 * len(wav)


def test_stop_strings_end_the_generation(http: httpx.Client, tokenizer: SpiritTokenizer) -> None:
    body = {
        "inputs": [{"type": "text", "text": "Count from one to twenty."}],
        "output_modality": "text",
        "max_tokens": 40,
        "temperature": 0,
    }
    full = generate(http, **body)
    text = "".join(segment["text"] for segment in full["segments"])
    assert len(text) >= 12, "the model should produce enough text to cut"
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    expected = text[: text.find(stop)].strip()
    # The ids end with the token that completed the stop string.
    stop_at = next(
        n for n in range(1, len(full["output_token_ids"]) + 1)
        if stop in tokenizer.decode_ids(full["output_token_ids"][:n])
    )  # fmt: skip
    cut = generate(http, **body, stop=[stop, "\u2603\u2603"])
    assert "".join(segment["text"] for segment in cut["segments"]) == expected
    assert cut["finish_reason"] == "stop"
    assert cut["output_token_ids"] == full["output_token_ids"][:stop_at]
    assert cut["usage"]["completion_tokens"] == stop_at
    assert cut["usage"]["prompt_tokens"] == len(full["prompt_token_ids"])
    events = sse_events(http, {**body, "stop": stop})
    streamed = "".join(e["delta"] for e in events if e["type"] == "text.delta")
    assert streamed.strip() == expected
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "stop"
    assert events[-1]["output_token_ids"] == cut["output_token_ids"]


def test_same_ids_as_the_generate_command(
    servers,  # noqa: ANN001
    http: httpx.Client,
    child_env: dict[str, str],
    speech_file: Path,
    speech_b64: str,
    tmp_path: Path,
) -> None:
    command = [
        sys.executable,
        "-m",
        "service",
        "generate",
        "--model",
        BASE,
        "--lm-url",
        servers.lm(BASE),
        "--json",
        "--input",
        f"speech:{speech_file}",
        "--input",
        "text: and then",
        "--output-modality",
        "speech",
        "--max-tokens",
        "30",
        "--temperature",
        "0",
        "-o",
        str(tmp_path / "cli"),
    ]
    done = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = json.loads(done.stdout.strip().splitlines()[-1])
    result = generate(
        http,
        inputs=[{"type": "speech", "audio": speech_b64}, {"type": "text", "text": " and then"}],
        output_modality="speech",
        max_tokens=30,
        temperature=0,
    )
    assert result["prompt"] == expected["prompt"]
    assert result["prompt_token_ids"] == expected["prompt_token_ids"]
    assert result["output_token_ids"] == expected["output_token_ids"]
    assert [s["tokens"] for s in result["segments"]] == [s["tokens"] for s in expected["segments"]]


# ---- bad requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "mention"),
    [
        ({"output_modality": "text"}, 400, "inputs"),
        ({"inputs": [{"type": "speech", "audio": "AAAA", "tokens": "[Hu1]"}]}, 422, "inputs.0"),
        ({"inputs": [{"type": "speech", "audio": "not base64!"}]}, 400, "inputs[0].audio"),
        ({"inputs": [{"type": "speech", "tokens": "no units here"}]}, 400, "inputs[0].tokens"),
        ({"inputs": [{"type": "video", "text": "x"}]}, 422, "inputs.0.type"),
        ({"prompt": "[Text]a", "output_modality": "video"}, 422, "output_modality"),
        ({"prompt": "[Text]a", "model": "spirit-lm-huge-70b"}, 404, "spirit-lm-huge-70b"),
        ({"prompt": "[Text]a", "max_tokens": 0}, 422, "max_tokens"),
        ({"prompt": "[Text]a", "max_tokens": 100000}, 400, "max_tokens"),
        ({"prompt": "[Text]a", "temperature": 3}, 422, "temperature"),
        ({"prompt": "[Text]a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"prompt": "[Text]a", "stop": [""]}, 400, "stop[0]"),
        ({"prompt": "[Text]a", "frequency_penalty": 0.5}, 422, "frequency_penalty"),
        ({"inputs": [{"type": "text", "text": "a", "lang": "en"}]}, 422, "lang"),
        ({"inputs": [{"type": "text", "text": "hi </s> <s>"}]}, 400, "inputs[0].text"),
        ({"inputs": [{"type": "text", "text": "hi [Speech]"}]}, 400, "control token [Speech]"),
        ({"inputs": [{"type": "text", "text": "hi [Hu12]"}]}, 400, "speech token [Hu12]"),
        ({"inputs": [{"type": "speech", "tokens": "abc[Hu12]<s>"}]}, 400, "only speech tokens"),
        ({"inputs": [{"type": "speech", "tokens": "[Hu1][Hu99999999]"}]}, 400, "not a unit"),
        ({"inputs": [{"type": "speech", "tokens": "[Hu1][Pi3]"}]}, 400, "0 pitch units"),
        (
            {"prompt": "[Speech]", "output_modality": "speech", "speaker": 4, "stream": True},
            400,
            "speaker 4",
        ),
    ],
)
def test_bad_requests_name_the_field(
    http: httpx.Client, body: dict, status: int, mention: str
) -> None:
    response = http.post("/v1/generate", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert mention in error["message"]
    assert error["type"] in ("invalid_request_error", "not_found_error")


def vllm_counters(lm_url: str) -> tuple[float, float]:
    """(requests running, prompt tokens received so far) from the vLLM worker's metrics."""
    values = {"vllm:num_requests_running": 0.0, "vllm:prompt_tokens_total": 0.0}
    for line in httpx.get(lm_url + "/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in values:
            values[name] += float(line.rsplit(" ", 1)[1])
    return values["vllm:num_requests_running"], values["vllm:prompt_tokens_total"]


def test_format_and_rate_are_refused_before_generation(
    servers,  # noqa: ANN001
    http: httpx.Client,
    speech_b64: str,
) -> None:
    lm = servers.lm(BASE)
    deadline = time.monotonic() + 60
    while vllm_counters(lm)[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    prompt_tokens = vllm_counters(lm)[1]
    speech_out = {"output_modality": "speech", "max_tokens": 8, "response_format": "opus"}
    for body, mention in (
        ({"prompt": "[Speech]", **speech_out, "sample_rate": 44100}, "44100"),
        ({"inputs": [{"type": "speech", "audio": speech_b64}], **speech_out, "sample_rate": 32000},
         "32000"),
        ({"prompt": "[Speech]", **speech_out, "response_format": "wav", "sample_rate": 11025},
         "11025"),
    ):  # fmt: skip
        response = http.post("/v1/generate", json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "sample_rate" and "sample_rate" in error["message"], error
        assert mention in error["message"], error
    assert vllm_counters(lm)[1] == prompt_tokens, "a refused request reached the LM worker"
    # Streamed audio is pcm16 deltas whatever response_format says: any offered rate works,
    # and nothing is vocoded with `audio: false`.
    for body in ({**speech_out, "sample_rate": 44100, "stream": True},
                 {**speech_out, "sample_rate": 44100, "audio": False}):  # fmt: skip
        response = http.post("/v1/generate", json={"prompt": "[Speech]", **body, "max_tokens": 4})
        assert response.status_code == 200, response.text


def test_prompt_text_is_bounded_before_the_lm(servers, http: httpx.Client) -> None:  # noqa: ANN001
    lm = servers.lm(BASE)
    deadline = time.monotonic() + 60
    while vllm_counters(lm)[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    prompt_tokens = vllm_counters(lm)[1]
    too_long = "a " * 100_001  # over the default max_prompt_chars of 200000
    for body, field in (
        ({"prompt": "[Text]" + too_long}, "prompt"),
        ({"inputs": [{"type": "text", "text": too_long}]}, "inputs"),
    ):
        response = http.post("/v1/generate", json={**body, "max_tokens": 4})
        assert response.status_code == 400, response.text[:500]
        error = response.json()["error"]
        assert error["param"] == field and "max_prompt_chars" in error["message"], error
        assert "200000" in error["message"], error
    chat = {"messages": [{"role": "user", "content": too_long}], "max_tokens": 4}
    response = http.post("/v1/chat/completions", json=chat)
    assert response.status_code == 400, response.text[:500]
    assert response.json()["error"]["param"] == "messages"
    assert vllm_counters(lm)[1] == prompt_tokens, "a refused request reached the LM worker"


def test_health_answers_while_a_long_prompt_is_tokenized(gateway: str) -> None:
    """Tokenizing runs off the event loop: /health stays quick meanwhile."""
    done = threading.Event()

    def post_long_prompt() -> None:
        try:
            with httpx.Client(base_url=gateway, timeout=120.0) as client:
                body = {"prompt": "[Text]" + "hello world, " * 11_500, "max_tokens": 4}
                client.post("/v1/generate", json=body)  # any answer: the context is too small
        finally:
            done.set()

    worker = threading.Thread(target=post_long_prompt)
    worker.start()
    latencies: list[float] = []
    with httpx.Client(base_url=gateway, timeout=30.0) as client:
        while not done.is_set():
            start = time.monotonic()
            assert client.get("/health").status_code == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)
    worker.join()
    assert latencies and max(latencies) < 1.0, latencies


def test_audio_that_is_not_audio_is_refused(http: httpx.Client) -> None:
    junk = base64.b64encode(b"this is plain text, not a sound file " * 20).decode()
    response = http.post(
        "/v1/generate", json={"inputs": [{"type": "speech", "audio": junk}], "max_tokens": 5}
    )
    assert response.status_code == 400
    assert "audio" in response.json()["error"]["message"]


def test_invalid_json_is_a_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/generate", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


# ---- auth, limits, metrics -------------------------------------------------------------------


def test_api_keys(servers) -> None:  # noqa: ANN001
    url = servers.gateway(BASE, "--api-keys", "k1", name="auth")
    with httpx.Client(base_url=url, timeout=60.0) as client:
        missing = client.get("/v1/models")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["type"] == "authentication_error"
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer k2"})
        assert wrong.status_code == 401
        ok = client.get("/v1/models", headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200
        assert BASE in [model["id"] for model in ok.json()["data"]]
        assert client.get("/health").status_code == 200
        refused = client.post("/v1/generate", json={"prompt": "[Text]a", "max_tokens": 2})
        assert refused.status_code == 401
        accepted = client.post(
            "/v1/generate",
            json={"prompt": "[Text]a", "output_modality": "text", "max_tokens": 2},
            headers={"Authorization": "Bearer k1"},
        )
        assert accepted.status_code == 200


def test_body_limit(servers, speech_b64: str) -> None:  # noqa: ANN001
    url = servers.gateway(BASE, "--max-body-bytes", "4096", name="small-body")
    body = {"inputs": [{"type": "speech", "audio": speech_b64}], "max_tokens": 5}
    with httpx.Client(base_url=url, timeout=60.0) as client:
        declared = client.post("/v1/generate", json=body)
        assert declared.status_code == 413
        assert "4096" in declared.json()["error"]["message"]
        # Without a Content-Length the limit applies while the body streams in.
        payload = json.dumps(body).encode()
        chunks = (payload[i : i + 1024] for i in range(0, len(payload), 1024))
        streamed = client.post(
            "/v1/generate", content=chunks, headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        small = client.post(
            "/v1/generate", json={"prompt": "[Text]a", "output_modality": "text", "max_tokens": 2}
        )
        assert small.status_code == 200


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_requests_by_route(http: httpx.Client) -> None:
    before = metric_samples(http.get("/metrics").text)
    key = (
        "spiritlm_requests_total",
        (("method", "POST"), ("route", "/v1/generate"), ("status", "200")),
    )
    generate(http, prompt="[Text]Hi", output_modality="text", max_tokens=3, temperature=0)
    http.post("/v1/generate", json={"prompt": "[Text]a", "max_tokens": 100000})
    text = http.get("/metrics").text
    after = metric_samples(text)
    assert after[key] == before.get(key, 0) + 1
    rejected = (
        "spiritlm_requests_total",
        (("method", "POST"), ("route", "/v1/generate"), ("status", "400")),
    )
    assert after[rejected] >= 1
    ttft = ("spiritlm_time_to_first_token_seconds_count", (("route", "/v1/generate"),))
    assert after[ttft] >= before.get(ttft, 0) + 1
    for name in (
        "spiritlm_request_seconds",
        "spiritlm_requests_in_flight",
        "spiritlm_time_to_first_audio_seconds",
        "spiritlm_real_time_factor",
        "spiritlm_worker_healthy",
    ):
        assert name in text
    healthy = [v for (name, _), v in after.items() if name == "spiritlm_worker_healthy"]
    assert healthy and all(value == 1 for value in healthy)
