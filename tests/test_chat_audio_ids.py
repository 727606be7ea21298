"""Chat audio ids work on any gateway replica: the id holds the speech, signed (chat/memory.py).

Two gateway processes on the same workers, with the same `signing_key`, stand for two replicas
behind a Service without affinity; ids signed with another key stand for a misconfigured one.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import openai
import pytest
from pydantic import SecretStr

from service.checkpoints.layout import BASE
from service.gateway.chat.memory import AUDIO_ID_PREFIX, AudioIdError, ChatMemory
from service.gateway.signing import Signer, sealed_length

API_KEY = "replica-api-key"
SIGNING_KEY = "replicas-share-this-key"
TOKENS = "[Hu12][Hu7][Hu7][Hu301]"


def memory(key: str = SIGNING_KEY, clock: float | None = None, limit: int = 2048) -> ChatMemory:
    settings = SimpleNamespace(signing_key=SecretStr(key), max_tokens_limit=limit)
    made = ChatMemory.from_settings(settings)
    if clock is not None:
        made.clock = lambda: clock
    return made


# ---- the id itself ----------------------------------------------------------------------------


def test_an_id_holds_the_model_and_the_speech_and_expires() -> None:
    audio_id, expires = memory(clock=1000.0).seal_audio(BASE, TOKENS)
    assert audio_id.startswith(AUDIO_ID_PREFIX) and expires == 1000 + 3600
    stored = memory(clock=4599.0).get_audio(audio_id)  # another process, same key
    assert (stored.model, stored.tokens, stored.expires_at) == (BASE, TOKENS, expires)
    with pytest.raises(AudioIdError, match="has expired"):
        memory(clock=4600.0).get_audio(audio_id)


def test_altered_foreign_and_oversized_ids_are_refused() -> None:
    audio_id, _ = memory().seal_audio(BASE, TOKENS)
    middle = len(audio_id) // 2
    altered = audio_id[:middle] + ("A" if audio_id[middle] != "A" else "B") + audio_id[middle + 1 :]
    for bad in (altered, audio_id[:-4], "audio_nope", AUDIO_ID_PREFIX + "!!!"):
        with pytest.raises(AudioIdError, match="not an audio id made by this service"):
            memory().get_audio(bad)
    with pytest.raises(AudioIdError, match="invalid signature"):
        memory(key="another-key").get_audio(audio_id)
    small = memory(limit=16)
    with pytest.raises(AudioIdError, match="max_tokens_limit=16"):
        small.get_audio(audio_id + "A" * small.max_id_chars)


def test_the_longest_reply_fits_the_bound_derived_from_max_tokens_limit() -> None:
    limit = 512
    made = memory(limit=limit)
    # Incompressible worst case: every token as long as a speech token gets.
    tokens = "".join(f"[Hu{(i * 7919) % 100000:05d}]" for i in range(limit))
    audio_id, _ = made.seal_audio(BASE, tokens)
    assert len(audio_id) <= made.max_id_chars
    assert made.get_audio(audio_id).tokens == tokens
    assert made.max_id_chars == sealed_length(made.max_payload_bytes, AUDIO_ID_PREFIX)


# ---- two replicas -----------------------------------------------------------------------------


def replicas(servers) -> tuple[openai.OpenAI, openai.OpenAI]:  # noqa: ANN001
    # The same two processes as tests/test_client_secrets.py's (same arguments and names).
    keyed = ("--api-keys", API_KEY, "--signing-key", SIGNING_KEY)
    a = servers.gateway(BASE, *keyed, name="keyed-a")
    b = servers.gateway(BASE, *keyed, name="keyed-b")
    return (
        openai.OpenAI(base_url=a + "/v1", api_key=API_KEY, max_retries=0),
        openai.OpenAI(base_url=b + "/v1", api_key=API_KEY, max_retries=0),
    )


def follow_up(client: openai.OpenAI, audio_id: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=BASE,
        messages=[
            {"role": "user", "content": "Say something."},
            {"role": "assistant", "audio": {"id": audio_id}},
            {"role": "user", "content": "Once more, in text."},
        ],
        max_tokens=2,
        temperature=0,
    )


def test_an_audio_id_from_one_replica_works_on_another(servers) -> None:  # noqa: ANN001
    a, b = replicas(servers)
    reply = a.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Say something."}],
        modalities=["text", "audio"],
        audio={"voice": "2", "format": "pcm16"},
        max_tokens=20,
        temperature=0,
    )
    audio_id = reply.choices[0].message.audio.id
    on_a, on_b = follow_up(a, audio_id), follow_up(b, audio_id)
    # The same history on both: the id carried the 20 speech tokens to B.
    assert on_b.usage.prompt_tokens == on_a.usage.prompt_tokens
    without = b.chat.completions.create(
        model=BASE,
        messages=[
            {"role": "user", "content": "Say something."},
            {"role": "user", "content": "Once more, in text."},
        ],
        max_tokens=2,
    )
    assert on_b.usage.prompt_tokens >= without.usage.prompt_tokens + 20

    # A streamed reply's id (in its last audio delta) works on the other replica too.
    chunks = list(
        b.chat.completions.create(
            model=BASE,
            messages=[{"role": "user", "content": "Say something."}],
            modalities=["text", "audio"],
            audio={"voice": "2", "format": "pcm16"},
            max_tokens=10,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta.audio for c in chunks if c.choices and c.choices[0].delta.audio]
    ids = [audio.id for audio in deltas if audio.id]
    assert len(ids) == 1
    assert follow_up(a, ids[0]).choices[0].message.content is not None


def test_altered_expired_and_foreign_ids_are_a_400(servers) -> None:  # noqa: ANN001
    _, b = replicas(servers)
    signer = Signer(SIGNING_KEY.encode())
    expired = signer.seal(AUDIO_ID_PREFIX, f"{BASE}\n{TOKENS}".encode(), int(time.time()) - 1)
    live = signer.seal(AUDIO_ID_PREFIX, f"{BASE}\n{TOKENS}".encode(), int(time.time()) + 60)
    assert follow_up(b, live).usage.prompt_tokens > 0
    altered = live[:-6] + ("AAAAAA" if not live.endswith("AAAAAA") else "BBBBBB")
    foreign = Signer(b"another key").seal(
        AUDIO_ID_PREFIX, f"{BASE}\n{TOKENS}".encode(), int(time.time()) + 60
    )
    for audio_id, says in (
        (expired, "has expired"),
        (altered, "invalid signature"),
        (foreign, "signing_key"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            follow_up(b, audio_id)
        assert refused.value.body["param"] == "messages[1].audio.id"
        assert says in refused.value.body["message"]


# ---- deployments give every replica the key -------------------------------------------------


def test_every_gateway_replica_gets_the_signing_key_from_the_secret() -> None:
    from tests.test_deploy import (
        DEPLOYABLE,
        OUR_IMAGE,
        SECRET,
        compose_config,
        named,
        pod_templates,
        rendered,
        secret_ref,
    )

    want = {"name": SECRET, "key": "SPIRITLM_SIGNING_KEY"}
    for directory in DEPLOYABLE:
        manifests = rendered(directory)
        assert "SPIRITLM_SIGNING_KEY" in named(manifests, "Secret", SECRET)["stringData"]
        gateways = [
            container
            for pod in pod_templates(manifests)
            for container in pod.containers
            if (ours := OUR_IMAGE.match(container["image"])) and "gateway" in ours["target"]
        ]
        assert gateways, directory
        for container in gateways:
            assert secret_ref(container, "SPIRITLM_SIGNING_KEY") == want, directory
    services = compose_config(SPIRITLM_SIGNING_KEY="s-123")["services"]
    assert services["gateway"]["environment"]["SPIRITLM_SIGNING_KEY"] == "s-123"
    assert services["demo"]["environment"]["SPIRITLM_SIGNING_KEY"] == "s-123"
