"""Hostile realtime clients against the real processes: what one session may make the gateway hold.

A gateway with small per-session budgets (docs/security.md) meets a client that floods its
conversation with huge text items, one that fills the history and the item count, one that
sends large audio, and one that sends without ever reading; each is refused with an ``error``
event naming the setting, the session goes on, and the gateway's resident memory stays within a
bound (measured with psutil on the gateway process). A session fed only frames that are not
events still goes idle. Pure checks: the outbox's byte bound, fitting a huge history, and the
budget arithmetic.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.checkpoints.layout import BASE
from service.gateway.realtime.conversation import Conversation, Item, Part, fit_prompt
from service.gateway.realtime.outbox import Outbox
from service.lm.prompt import SpeechInput, TextInput, TurnEnd
from tests.support.realtime_client import Client, open_client, run, ws_url

MAX_ITEMS = 40
MAX_HISTORY_BYTES = 2_000_000
MAX_OUTBOX_BYTES = 1_000_000
MAX_BUFFER_SECONDS = 10
MB = 1024 * 1024


@pytest.fixture(scope="module")
def budget_gateway(servers) -> str:  # noqa: ANN001
    return servers.gateway(
        BASE,
        "--realtime-max-items",
        str(MAX_ITEMS),
        "--realtime-max-history-bytes",
        str(MAX_HISTORY_BYTES),
        "--realtime-max-outbox-bytes",
        str(MAX_OUTBOX_BYTES),
        "--realtime-max-buffer-seconds",
        str(MAX_BUFFER_SECONDS),
        name="hostile-realtime",
    )


def gateway_process(servers: Any, url: str) -> psutil.Process:  # noqa: ANN401
    child = next(child for child, started in servers.started.values() if started == url)
    return psutil.Process(child.popen.pid)


def rss(process: psutil.Process) -> int:
    return process.memory_info().rss


class PeakRss:
    """Samples a process's resident memory every 50 ms while in use; `peak` is the highest."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = rss(process)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss(self.process))

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss(self.process))
            await asyncio.sleep(0.05)


def text_item(text: str, role: str = "user") -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": role, "content": [{"type": kind, "text": text}]},
    }


async def create_ok(client: Client, text: str) -> str:
    await client.ws.send(json.dumps(text_item(text)))
    event = await client.until("conversation.item.added", "error")
    assert event["type"] == "conversation.item.added", event
    return event["item"]["id"]


async def create_refused(client: Client, text: str) -> dict[str, Any]:
    await client.ws.send(json.dumps(text_item(text)))
    event = await client.until("conversation.item.added", "error")
    assert event["type"] == "error", event
    return event["error"]


async def respond(client: Client) -> dict[str, Any]:
    await client.send(type="response.create", response={"max_output_tokens": 8})
    return await client.until("response.done", "error")


def test_huge_text_items_are_refused_before_they_are_kept(servers, budget_gateway: str) -> None:  # noqa: ANN001
    """The measured attack: 60 text items of 4 MB (240 MB), then response.create."""
    process = gateway_process(servers, budget_gateway)
    huge = "x" * (4 * 1000 * 1000)

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], int]:
        client = await open_client(budget_gateway)
        await create_ok(client, "hello there")
        before = rss(process)
        errors = []
        async with PeakRss(process) as memory:
            for _ in range(60):
                errors.append(await create_refused(client, huge))
            done = await respond(client)
        await client.ws.close()
        return errors, done, memory.peak - before

    errors, done, growth = run(scenario())
    assert {error["code"] for error in errors} == {"string_above_max_length"}
    assert errors[0]["param"] == "item.content"
    assert "max_prompt_chars" in errors[0]["message"] and "200000" in errors[0]["message"]
    assert done["type"] == "response.done", done
    assert done["response"]["status"] in ("completed", "incomplete")
    assert growth < 200 * MB, f"gateway grew by {growth / MB:.0f} MB"
    assert httpx.get(budget_gateway + "/health", timeout=5).status_code == 200


def test_history_and_item_budgets(budget_gateway: str) -> None:
    big = "y" * 150_000  # under max_prompt_chars; about 150 kB of history each

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        client = await open_client(budget_gateway)
        ids = []
        while True:
            await client.ws.send(json.dumps(text_item(big)))
            event = await client.until("conversation.item.added", "error")
            if event["type"] == "error":
                seen["history"] = event["error"]
                break
            ids.append(event["item"]["id"])
            assert len(ids) < MAX_ITEMS
        seen["kept"] = len(ids)
        # Deleting makes room again.
        await client.send(type="conversation.item.delete", item_id=ids.pop(0))
        await client.until("conversation.item.deleted")
        ids.append(await create_ok(client, big))
        # A reply over a history of about 2 MB of text: fitted without tokenizing all of it.
        started = time.monotonic()
        seen["reply"] = await respond(client)
        seen["reply_seconds"] = time.monotonic() - started
        # Fill the item count with small items.
        while True:
            await client.ws.send(json.dumps(text_item("short")))
            event = await client.until("conversation.item.added", "error")
            if event["type"] == "error":
                seen["items"] = event["error"]
                break
        seen["response_when_full"] = await respond(client)
        await client.send(type="conversation.item.delete", item_id=ids.pop())
        await client.until("conversation.item.deleted")
        seen["after_delete"] = await respond(client)
        await client.ws.close()
        return seen

    seen = run(scenario())
    history = seen["history"]
    assert history["code"] == "conversation_history_limit" and history["param"] == "item"
    assert "realtime_max_history_bytes" in history["message"]
    assert str(MAX_HISTORY_BYTES) in history["message"]
    assert seen["kept"] == MAX_HISTORY_BYTES // 150_000  # each holds a little over 150 kB
    assert seen["reply"]["type"] == "response.done", seen["reply"]
    assert seen["reply_seconds"] < 60
    items = seen["items"]
    assert items["code"] == "conversation_item_limit"
    assert "realtime_max_items" in items["message"] and str(MAX_ITEMS) in items["message"]
    full = seen["response_when_full"]
    assert full["type"] == "error" and full["error"]["code"] == "conversation_item_limit"
    assert seen["after_delete"]["type"] == "response.done", seen["after_delete"]


def test_audio_is_bounded_before_it_is_decoded(budget_gateway: str) -> None:
    too_long = base64.b64encode(bytes(24000 * 2 * (MAX_BUFFER_SECONDS + 2))).decode()

    async def scenario() -> list[dict[str, Any]]:
        client = await open_client(budget_gateway)
        errors = []
        await client.send(type="input_audio_buffer.append", audio=too_long)
        errors.append((await client.until("error"))["error"])
        await client.update(turn_detection=None)  # manual turns: the buffer adds up
        half = base64.b64encode(bytes(24000 * 2 * (MAX_BUFFER_SECONDS // 2 + 1))).decode()
        await client.send(type="input_audio_buffer.append", audio=half)
        await client.send(type="input_audio_buffer.append", audio=half)
        errors.append((await client.until("error"))["error"])
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": too_long}],
        }
        await client.send(type="conversation.item.create", item=item)
        errors.append((await client.until("error"))["error"])
        await client.send(type="input_audio_buffer.commit")  # what was held is still there
        errors.append(await client.until("input_audio_buffer.committed", "error"))
        await client.ws.close()
        return errors

    append, second, part, committed = run(scenario())
    assert append["code"] == "input_audio_buffer_full" and append["param"] == "audio"
    assert "realtime_max_buffer_seconds" in append["message"]
    assert second["code"] == "input_audio_buffer_full"
    assert part["code"] == "audio_too_long" and part["param"] == "item.content[0].audio"
    assert "realtime_max_buffer_seconds" in part["message"]
    assert committed["type"] == "input_audio_buffer.committed", committed


def test_a_client_that_never_reads_holds_the_gateway_to_a_bound(
    servers,  # noqa: ANN001
    budget_gateway: str,
) -> None:
    """Each retrieve of a 150 kB item makes a 150 kB event; the client asks for 2000 of them
    (300 MB) without reading. The session stops reading at the outbox's byte bound (measured
    without it, bounded in events only: about 146 MB)."""
    process = gateway_process(servers, budget_gateway)
    asks = 2000

    async def scenario() -> tuple[int, int, bool]:
        async with connect(ws_url(budget_gateway), max_size=None) as ws:
            client = Client(ws)
            await client.until("session.created")
            # Random text: the gateway compresses frames (permessage-deflate), and a repeated
            # character would travel as a few bytes and never fill the socket.
            item_id = await create_ok(client, base64.b64encode(os.urandom(112_500)).decode())
            await asyncio.sleep(0.5)
            before = rss(process)
            async with PeakRss(process) as memory:
                frame = json.dumps({"type": "conversation.item.retrieve", "item_id": item_id})
                for _ in range(asks):
                    await ws.send(frame)
                await asyncio.sleep(5)  # the gateway works through what it can take
            # Now read: every retrieve is answered, in order, and the session goes on.
            retrieved = 0
            while retrieved < asks:
                event = await client.next(60)
                client.seen.clear()
                retrieved += event["type"] == "conversation.item.retrieved"
            await client.send(type="conversation.item.retrieve", item_id="missing")
            error = await client.until("error")
            return memory.peak - before, retrieved, error["error"]["code"] == "item_not_found"

    growth, retrieved, alive = run(scenario())
    assert retrieved == asks and alive
    # Unbounded, the queue would hold 1024 of those events (150 MB); the bound is 1 MB.
    assert growth < 60 * MB, f"gateway grew by {growth / MB:.0f} MB"


async def drain(ws: Any) -> None:  # noqa: ANN401
    """Read what has arrived (the error events) without waiting for more."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 0.05)
    except (TimeoutError, asyncio.TimeoutError):
        pass


def test_frames_that_are_not_events_do_not_keep_a_session_open(servers) -> None:  # noqa: ANN001
    gateway = servers.gateway(
        BASE, "--realtime-idle-timeout-seconds", "3", name="hostile-realtime-idle"
    )

    async def scenario() -> tuple[int | None, str | None, float]:
        async with connect(ws_url(gateway), max_size=None) as ws:
            await ws.recv()  # session.created
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                while time.monotonic() - started < 30:
                    await ws.send(b"\x00 binary")
                    await ws.send("{not json")
                    await ws.send('{"type": "no.such.event"}')
                    await asyncio.sleep(0.3)
                    await drain(ws)
            return ws.close_code, ws.close_reason, time.monotonic() - started

    code, reason, after = run(scenario())
    assert code == 1000 and reason == "idle timeout"
    assert after < 15


# ---- pure parts --------------------------------------------------------------------------


def test_outbox_stops_taking_events_at_its_byte_bound() -> None:
    async def scenario() -> tuple[bool, bool, bool, int]:
        outbox = Outbox(limit=1000, max_bytes=10_000)
        outbox.put({"type": "big", "text": "a" * 6000})
        under = outbox.full()
        outbox.put({"type": "big", "text": "b" * 6000})
        over = outbox.full()
        waiter = asyncio.create_task(outbox.wait_for_room())
        await asyncio.sleep(0.02)
        held = not waiter.done()
        await outbox.get()
        await asyncio.wait_for(waiter, 1)
        return under, over, held, outbox.pending_bytes

    under, over, held, pending = asyncio.run(scenario())
    assert not under and over and held
    assert 6000 < pending < 6100


def test_fitting_a_huge_history_looks_only_at_what_can_fit() -> None:
    counted: list[int] = []

    def count(prompt: str) -> int:  # one token per character, at least
        counted.append(len(prompt))
        return len(prompt)

    turns = [[TextInput("w" * 1_000_000), TurnEnd()] for _ in range(20)]
    turns.append([SpeechInput("[Hu7]" * 100), TurnEnd()])
    prompt = fit_prompt([], turns, "speech", 2000, count, max_chars=2000 * 8)
    assert prompt.count("[Hu7]") == 100 and "w" not in prompt
    assert count(prompt) <= 2000
    assert max(counted) <= 2000 * 8 + 100  # never the 20 MB history
    # The newest turn alone over the bound: its tail is kept.
    alone = fit_prompt([], [[TextInput("v" * 5_000_000), TurnEnd()]], "text", 500, count, 4000)
    assert 400 < count(alone) <= 500 and max(counted) <= 4000 + 100


def test_history_bytes_count_text_tokens_and_audio_being_encoded() -> None:
    async def scenario() -> tuple[int, int, int]:
        conversation = Conversation("conv_test")
        conversation.add(Item("a", "user", [Part("text", text="t" * 1000)]))
        text_only = conversation.held_bytes()
        pending: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        part = Part("audio", pending_bytes=48_000)
        part.encoding = asyncio.ensure_future(pending)
        conversation.add(Item("b", "user", [part]))
        encoding = conversation.held_bytes()
        pending.set_result("[Hu1]" * 10)
        await asyncio.sleep(0)
        return text_only, encoding, conversation.held_bytes()

    text_only, encoding, encoded = asyncio.run(scenario())
    assert 1000 <= text_only < 1100
    assert encoding >= text_only + 48_000
    assert text_only + 50 <= encoded < text_only + 150
