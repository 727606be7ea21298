"""A minimal OpenAI Realtime client over raw `websockets`, written from the protocol (not with the
project's SDK), so tests check the wire format itself. Event names are accepted in both the GA
and the beta spelling (the service's table of the two is the one source of both).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from service.checkpoints.layout import BASE
from service.gateway.realtime.protocol import BETA_EVENT_NAMES

RATE = 24000
# Beta name -> GA name, so a test can ask for one name and accept both.
GA_NAMES = {beta: ga for ga, beta in BETA_EVENT_NAMES.items()}
EVENT_TIMEOUT = 120.0


def canonical(name: str) -> str:
    return GA_NAMES.get(name, name)


# ---- the test client ---------------------------------------------------------------------


class Client:
    """A minimal realtime client: send events, read events (kept in order in `seen`)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, **event: Any) -> None:
        await self.ws.send(json.dumps(event))

    async def next(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        event = json.loads(frame)
        event["type"] = canonical(event["type"])
        self.seen.append(event)
        return event

    async def until(self, *types: str, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        """Read events until one of `types` arrives; return it."""
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(max(0.1, deadline - time.monotonic()))
            if event["type"] in types:
                return event

    async def update(self, **session: Any) -> dict[str, Any]:
        await self.send(type="session.update", session=session)
        return await self.until("session.updated")

    async def append(self, pcm: bytes, *, chunk_seconds: float = 0.1, rate: int = RATE) -> None:
        step = int(chunk_seconds * rate) * 2
        for start in range(0, len(pcm), step):
            piece = base64.b64encode(pcm[start : start + step]).decode()
            await self.send(type="input_audio_buffer.append", audio=piece)

    def of(self, name: str, response_id: str | None = None) -> list[dict[str, Any]]:
        return [
            event
            for event in self.seen
            if event["type"] == name and response_id in (None, event.get("response_id"))
        ]

    def audio_samples(self, response_id: str) -> int:
        deltas = self.of("response.output_audio.delta", response_id)
        return sum(len(base64.b64decode(event["delta"])) // 2 for event in deltas)


def ws_url(gateway: str, model: str = BASE) -> str:
    return gateway.replace("http://", "ws://") + f"/v1/realtime?model={model}"


async def open_client(gateway: str, **headers: str) -> Client:
    ws = await connect(ws_url(gateway), max_size=None, additional_headers=headers or None)
    client = Client(ws)
    created = await client.until("session.created")
    assert created["session"]["id"].startswith("sess_")
    return client


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
