"""Ephemeral client secrets (POST /v1/realtime/client_secrets), with the official `openai` SDK.

Two gateway processes with API keys and one `signing_key` stand for two replicas: a secret made
on one opens a session on the other. The secret opens one realtime WebSocket, bound to the
session configuration it was made with, until it expires; REST routes refuse it.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from service.checkpoints.layout import BASE
from service.gateway.realtime.client_secrets import (
    CLIENT_SECRET_PREFIX,
    ClientSecrets,
    SecretRefused,
)
from service.gateway.signing import Signer

API_KEY = "replica-api-key"
SIGNING_KEY = "replicas-share-this-key"


@pytest.fixture(scope="module")
def replicas(servers) -> tuple[str, str]:  # noqa: ANN001
    keyed = ("--api-keys", API_KEY, "--signing-key", SIGNING_KEY)
    return (
        servers.gateway(BASE, *keyed, name="keyed-a"),
        servers.gateway(BASE, *keyed, name="keyed-b"),
    )


def sdk(url: str, key: str = API_KEY) -> openai.OpenAI:
    ws_base = url.replace("http://", "ws://") + "/v1"
    return openai.OpenAI(
        base_url=url + "/v1", websocket_base_url=ws_base, api_key=key, max_retries=0
    )


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/realtime"


async def refusal(url: str, **options: object) -> tuple[int, dict]:
    """The HTTP status and error body of a refused handshake."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, open_timeout=30, **options):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


# ---- the secret itself ------------------------------------------------------------------------


def test_a_secret_is_signed_expires_and_opens_one_session() -> None:
    signer = Signer(b"k")
    content = json.dumps({"id": "cs_1", "session": {"model": BASE}}).encode()
    secret = signer.seal(CLIENT_SECRET_PREFIX, content, expires_at=2000)
    secrets = ClientSecrets(signer)
    assert secrets.admit(secret, now=1999.0).model == BASE
    with pytest.raises(SecretRefused, match="already used"):
        secrets.admit(secret, now=1999.5)
    with pytest.raises(SecretRefused, match="expired"):
        ClientSecrets(signer).admit(secret, now=2000.0)
    with pytest.raises(SecretRefused, match="invalid signature"):
        ClientSecrets(Signer(b"other")).admit(secret, now=1000.0)
    # Forgotten once expired: the memory of used secrets does not grow without end.
    content = json.dumps({"id": "cs_2", "session": {"model": BASE}}).encode()
    secrets.admit(signer.seal(CLIENT_SECRET_PREFIX, content, expires_at=3000), now=2500.0)
    assert list(secrets._used) == ["cs_2"]


# ---- with the SDK, against two replicas -------------------------------------------------------


def test_a_secret_opens_one_bound_session_on_any_replica(replicas: tuple[str, str]) -> None:
    a, b = replicas
    made = sdk(a).realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 120},
        session={
            "type": "realtime",
            "model": BASE,
            "instructions": "Answer in one word.",
            "output_modalities": ["text"],
        },
    )
    assert made.value.startswith("ek_")
    assert abs(made.expires_at - (time.time() + 120)) < 30
    assert made.session.instructions == "Answer in one word."
    assert made.session.output_modalities == ["text"]

    # The browser's way on replica B (the subprotocol), then the SDK's way (Bearer): refused.
    async def browser() -> tuple[dict, int, dict]:
        protocols = ["realtime", f"openai-insecure-api-key.{made.value}"]
        async with connect(ws_url(b), subprotocols=protocols, open_timeout=30) as ws:
            created = json.loads(await asyncio.wait_for(ws.recv(), 30))
        status, body = await refusal(
            ws_url(b), additional_headers={"Authorization": f"Bearer {made.value}"}
        )
        return created, status, body

    created, status, body = asyncio.run(browser())
    assert created["type"] == "session.created"
    # The session starts with the configuration the secret is bound to.
    assert created["session"]["instructions"] == "Answer in one word."
    assert created["session"]["output_modalities"] == ["text"]
    assert status == 401 and "already used" in body["error"]["message"]

    # The official SDK's realtime client, with a fresh secret as its key.
    fresh = sdk(b).realtime.client_secrets.create(session={"type": "realtime", "model": BASE})
    assert fresh.expires_at - time.time() > 500  # client_secret_default_seconds (600)
    with sdk(a, fresh.value).realtime.connect(model=BASE) as connection:
        event = connection.recv()
        assert event.type == "session.created"
        assert event.session.model == BASE


def test_a_refused_handshake_does_not_spend_the_secret_and_aliases_name_its_model(
    replicas: tuple[str, str],
) -> None:
    a, _ = replicas
    made = sdk(a).realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime"}
    )
    bearer = {"additional_headers": {"Authorization": f"Bearer {made.value}"}}

    async def scenario() -> tuple[dict, dict, dict]:
        # Another model than the secret's: refused (an error event, then 1008), nothing opened.
        async with connect(ws_url(a) + "?model=no-such-model", open_timeout=30, **bearer) as ws:
            refused = json.loads(await asyncio.wait_for(ws.recv(), 30))
        # The same secret then opens its session, named by the alias it was made with.
        async with connect(ws_url(a) + "?model=gpt-realtime", open_timeout=30, **bearer) as ws:
            created = json.loads(await asyncio.wait_for(ws.recv(), 30))
        _, spent = await refusal(ws_url(a), **bearer)  # now it is spent
        return refused, created, spent

    refused, created, spent = asyncio.run(scenario())
    assert refused["type"] == "error" and refused["error"]["param"] == "model", refused
    assert created["type"] == "session.created" and created["session"]["model"] == BASE
    assert "already used" in spent["error"]["message"]


def test_secrets_are_refused_once_expired_and_outside_the_websocket(
    replicas: tuple[str, str],
) -> None:
    a, b = replicas
    short = sdk(a).realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 10}, session={"model": BASE}
    )
    # REST routes take API keys only, never a client secret: not even to make another secret.
    with pytest.raises(openai.AuthenticationError) as rest:
        sdk(a, short.value).models.list()
    assert "only as the credential of the realtime WebSocket" in rest.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        sdk(b, short.value).realtime.client_secrets.create(session={"model": BASE})
    time.sleep(max(0.0, short.expires_at - time.time()) + 1)
    status, body = asyncio.run(
        refusal(ws_url(b), additional_headers={"Authorization": f"Bearer {short.value}"})
    )
    assert status == 401 and "expired" in body["error"]["message"]
    altered = short.value[:-4] + ("AAAA" if not short.value.endswith("AAAA") else "BBBB")
    status, body = asyncio.run(
        refusal(ws_url(a), subprotocols=[f"openai-insecure-api-key.{altered}"])
    )
    assert status == 401 and "invalid client secret" in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"expires_after": {"anchor": "created_at", "seconds": 5}}, "expires_after.seconds"),
        ({"expires_after": {"anchor": "created_at", "seconds": 9000}}, "expires_after.seconds"),
        ({"expires_after": {"anchor": "now"}}, "expires_after.anchor"),
        ({"session": {"audio": {"output": {"voice": "nobody"}}}}, "session.audio.output.voice"),
        ({"session": {"model": "no-such-model"}}, "session.model"),
        ({"sesion": {}}, "sesion"),
        ({"session": {"turn_detection": {"eagerness": "low"}}}, "session.turn_detection.eagerness"),
    ],
    ids=["too-short", "too-long", "anchor", "voice", "model", "unknown-field", "unknown-setting"],
)
def test_bad_requests_name_the_field(replicas: tuple[str, str], body: dict, param: str) -> None:
    answer = httpx.post(
        replicas[0] + "/v1/realtime/client_secrets",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert 400 <= answer.status_code < 500, answer.text
    assert param in (answer.json()["error"]["param"] or "") + answer.json()["error"]["message"]


def test_a_secret_can_bind_a_transcription_session(replicas: tuple[str, str]) -> None:
    a, b = replicas
    made = sdk(a).realtime.client_secrets.create(session={"type": "transcription"})
    assert made.session.type == "transcription"

    async def first_event() -> dict:
        protocols = ["realtime", f"openai-insecure-api-key.{made.value}"]
        async with connect(ws_url(b), subprotocols=protocols, open_timeout=30) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 30))

    created = asyncio.run(first_event())
    assert created["session"]["type"] == "transcription", created
