"""Where spoken replies end, against the real vLLM, speech worker and gateway.

The LM is a scripted checkpoint (tests/support/scripted_lm.py): same tokenizer and geometry as the
embedded base LM, but greedy decoding follows a fixed chain after the last prompt token. After
``[Speech]`` (how chat, realtime and TTS prompts for speech end) it says 12 speech units, then 4
silence units (learnt from the speech tokenizer, as the gateway learns them), then a newline;
after ``[Text]`` (how every ASR prompt ends) it says "good morning" and a newline. So each
ending is known to the token:

* with the end-of-speech rule on (3 silence tokens after at least 4 speech tokens): 12 + 3 ids;
* with it off: the model's own turn end, 12 + 4 + the newline id;
* with max_tokens 5: 5 ids and finish_reason "length" (realtime: status "incomplete").
"""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile

from service.checkpoints.layout import BASE, CheckpointLayout
from service.lm.ending import line_end_ids
from service.lm.tokenizer import SpiritTokenizer
from service.lm.worker import vllm_argv
from service.process import free_port
from service.speech.pipeline import SpeechStack
from tests.support.realtime_client import open_client, run
from tests.support.scripted_lm import write_scripted_lm

SPEECH_UNITS = 12
SILENCE_UNITS = 4
SILENCE_RULE = 3  # --end-of-speech-silence-tokens of the first gateway
MIN_SPEECH = 4
TRANSCRIPT = "good morning"


@dataclass(frozen=True)
class Script:
    speech: list[int]  # ids of the speech units said after [Speech]
    silence: list[int]  # ids of the silence units that follow them
    newline: int
    text: list[int]  # ids of TRANSCRIPT, said after [Text]

    @property
    def until_silence(self) -> list[int]:
        return self.speech + self.silence[:SILENCE_RULE]

    @property
    def until_line_end(self) -> list[int]:
        return self.speech + self.silence + [self.newline]


@pytest.fixture(scope="module")
def script(layout: CheckpointLayout) -> Script:
    tokenizer = SpiritTokenizer.from_dir(layout.lm_dir(BASE))
    silence_values = sorted(SpeechStack(layout, BASE).silence_units())
    speech_values = [v for v in range(100, 500) if v not in silence_values][:SPEECH_UNITS]
    assert len(silence_values) >= SILENCE_UNITS, silence_values
    text = tokenizer.encode(TRANSCRIPT)[1:]  # without BOS
    assert len(set(text)) == len(text), "the transcript's pieces must be distinct"
    newline = tokenizer.encode("a\nb")[2]
    assert newline in line_end_ids(tokenizer)
    return Script(
        speech=[tokenizer.unit_id("hubert", v) for v in speech_values],
        silence=[tokenizer.unit_id("hubert", v) for v in silence_values[:SILENCE_UNITS]],
        newline=newline,
        text=text,
    )


@pytest.fixture(scope="module")
def scripted_lm(servers, layout: CheckpointLayout, script: Script, tmp_path_factory) -> str:  # noqa: ANN001
    tokenizer = SpiritTokenizer.from_dir(layout.lm_dir(BASE))
    speech_chain = [tokenizer.speech_marker_id, *script.until_line_end, tokenizer.eos_id]
    text_chain = [tokenizer.text_marker_id, *script.text, script.newline]
    successors = dict(zip(speech_chain, speech_chain[1:], strict=False))
    successors.update(zip(text_chain, text_chain[1:], strict=False))
    lm_dir = write_scripted_lm(
        layout.lm_dir(BASE),
        tmp_path_factory.mktemp("scripted") / BASE,
        successors,
        fallback=script.speech[0],
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = vllm_argv(lm_dir, BASE, host="127.0.0.1", port=port)
    servers.spawn_lm("lm-scripted", argv, url)
    return url


def _gateway(servers, lm_url: str, silence_tokens: int) -> str:  # noqa: ANN001
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "service", "gateway", "--port", str(port), "--model", BASE]
    argv += ["--lm-url", lm_url, "--speech-url", servers.speech()]
    argv += ["--end-of-speech-silence-tokens", str(silence_tokens)]
    argv += ["--end-of-speech-min-speech-tokens", str(MIN_SPEECH)]
    servers.spawn(f"gateway-scripted-{silence_tokens}", argv, url, "/ready", 120)
    return url


@pytest.fixture(scope="module")
def gateway(servers, scripted_lm: str) -> str:  # noqa: ANN001
    """The end-of-speech rule on."""
    return _gateway(servers, scripted_lm, SILENCE_RULE)


@pytest.fixture(scope="module")
def gateway_without_rule(servers, scripted_lm: str) -> str:  # noqa: ANN001
    """Only the model's own turn end (or max_tokens) ends a spoken reply."""
    return _gateway(servers, scripted_lm, 0)


@pytest.fixture(scope="module")
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=120) as client:
        yield client


def _client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=120)


def _generate(gateway: str, **fields: Any) -> dict[str, Any]:
    body = {"inputs": [{"type": "text", "text": "Say it."}], "output_modality": "speech"}
    response = httpx.post(gateway + "/v1/generate", json={**body, **fields}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _spoken_chat(gateway: str, **fields: Any) -> Any:
    return _client(gateway).chat.completions.create(
        model=BASE,
        modalities=["text", "audio"],
        audio={"voice": "2", "format": "wav"},
        messages=[{"role": "user", "content": "Say something."}],
        temperature=0,
        **fields,
    )


# ---- /v1/generate: the ids themselves ------------------------------------------------------


def test_generate_ends_at_silence_after_speech(gateway: str, script: Script) -> None:
    done = _generate(gateway, temperature=0, max_tokens=100, end_of_turn=True)
    assert done["output_token_ids"] == script.until_silence
    assert (done["finish_reason"], done["end"]) == ("stop", "end_of_speech")
    assert done["usage"]["completion_tokens"] == len(script.until_silence)
    assert done["segments"][0]["type"] == "speech" and done["segments"][0]["seconds"] > 0


def test_generate_ends_at_the_models_line_end(gateway_without_rule: str, script: Script) -> None:
    done = _generate(gateway_without_rule, temperature=0, max_tokens=100, end_of_turn=True)
    assert done["output_token_ids"] == script.until_line_end
    assert (done["finish_reason"], done["end"]) == ("stop", "line_end")


def test_generate_without_end_of_turn_runs_to_max_tokens(gateway: str, script: Script) -> None:
    done = _generate(gateway, temperature=0, max_tokens=20)
    # Speech output bans text ids, the newline included, and silence does not end it either:
    # after the chain's newline is refused, greedy picks among tied logits until max_tokens.
    assert done["output_token_ids"][:16] == script.speech + script.silence
    assert (done["finish_reason"], done["end"]) == ("length", "max_tokens")
    assert len(done["output_token_ids"]) == 20


def test_generate_tokens_only_vocodes_nothing(gateway: str, script: Script) -> None:
    done = _generate(gateway, temperature=0, max_tokens=100, end_of_turn=True, audio=False)
    assert done["output_token_ids"] == script.until_silence
    (segment,) = done["segments"]
    assert segment["tokens"].count("[Hu") == len(script.until_silence)
    assert segment["audio"] is None and segment["seconds"] is None


def test_streamed_generate_reports_the_same_end(gateway: str, script: Script) -> None:
    body = {"inputs": [{"type": "text", "text": "Say it."}], "output_modality": "speech"}
    body |= {"temperature": 0, "max_tokens": 100, "end_of_turn": True, "stream": True}
    with httpx.stream("POST", gateway + "/v1/generate", json=body, timeout=120) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: {")]
    done = next(event for event in map(json.loads, lines) if event["type"] == "done")
    assert done["output_token_ids"] == script.until_silence
    assert done["end"] == "end_of_speech"


# ---- chat --------------------------------------------------------------------------------


def test_spoken_chat_reply_ends_with_a_transcript(
    gateway: str, http: httpx.Client, script: Script
) -> None:
    completion = _spoken_chat(gateway, max_tokens=100)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens == len(script.until_silence)
    audio = choice.message.audio
    wav, rate = soundfile.read(io.BytesIO(base64.b64decode(audio.data)))
    assert rate == 24000 and len(wav) > 0 and np.abs(wav).max() > 0
    # The transcript is the same LM's ASR answer, as the transcription endpoint gives it for
    # the reply's audio.
    assert audio.transcript == TRANSCRIPT
    form = {"model": BASE, "temperature": "0"}
    files = {"file": ("reply.wav", base64.b64decode(audio.data), "audio/wav")}
    transcribed = http.post("/v1/audio/transcriptions", data=form, files=files)
    assert transcribed.status_code == 200, transcribed.text
    assert transcribed.json()["text"] == audio.transcript


def test_spoken_chat_reply_at_max_tokens_says_length(gateway: str) -> None:
    completion = _spoken_chat(gateway, max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_streamed_spoken_chat_streams_the_transcript(gateway: str, script: Script) -> None:
    stream = _client(gateway).chat.completions.create(
        model=BASE,
        modalities=["text", "audio"],
        audio={"voice": "2", "format": "pcm16"},
        messages=[{"role": "user", "content": "Say something."}],
        temperature=0,
        max_tokens=100,
        stream=True,
        stream_options={"include_usage": True},
    )
    audio, transcript, finish, usage = b"", "", None, None
    for chunk in stream:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta.model_dump()
        piece = delta.get("audio") or {}
        audio += base64.b64decode(piece.get("data") or "")
        transcript += piece.get("transcript") or ""
        finish = chunk.choices[0].finish_reason or finish
    assert len(audio) > 0
    assert transcript == TRANSCRIPT
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == len(script.until_silence)


# ---- TTS ---------------------------------------------------------------------------------


def _speech_events(http: httpx.Client, **fields: Any) -> list[dict[str, Any]]:
    body = {"model": BASE, "input": "Good morning", "voice": "2", "stream_format": "sse"}
    with http.stream("POST", "/v1/audio/speech", json={**body, **fields}) as response:
        assert response.status_code == 200, response.read()
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines]


def test_speech_ends_at_silence_after_speech(http: httpx.Client, script: Script) -> None:
    events = _speech_events(http, temperature=0)
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    assert done["usage"]["output_tokens"] == len(script.until_silence)
    assert done["finish_reason"] == "stop"
    assert any(event["type"] == "speech.audio.delta" for event in events)


def test_speech_at_max_tokens_says_length(http: httpx.Client) -> None:
    done = _speech_events(http, temperature=0, max_tokens=5)[-1]
    assert done["usage"]["output_tokens"] == 5
    assert done["finish_reason"] == "length"


# ---- realtime ----------------------------------------------------------------------------


def _realtime_reply(gateway: str, max_output_tokens: int) -> tuple[dict[str, Any], str]:
    async def scenario() -> tuple[dict[str, Any], str]:
        client = await open_client(gateway)
        await client.update(max_output_tokens=max_output_tokens)
        await client.send(
            type="conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Say something."}],
            },
        )
        await client.until("conversation.item.added")
        await client.send(type="response.create")
        done = await client.until("response.done")
        transcripts = client.of("response.output_audio_transcript.done")
        await client.ws.close()
        return done["response"], "".join(event["transcript"] for event in transcripts)

    return run(scenario())


def test_realtime_reply_ends_by_itself(gateway: str, script: Script) -> None:
    response, transcript = _realtime_reply(gateway, 100)
    assert response["status"] == "completed"
    assert response["usage"]["output_tokens"] == len(script.until_silence)
    assert transcript == TRANSCRIPT


def test_realtime_reply_at_max_tokens_is_incomplete(gateway: str) -> None:
    response, _ = _realtime_reply(gateway, 5)
    assert response["status"] == "incomplete"
    assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert response["usage"]["output_tokens"] == 5


def test_realtime_reply_ends_at_the_models_line_end(
    gateway_without_rule: str, script: Script
) -> None:
    response, _ = _realtime_reply(gateway_without_rule, 100)
    assert response["status"] == "completed"
    assert response["usage"]["output_tokens"] == len(script.until_line_end)
