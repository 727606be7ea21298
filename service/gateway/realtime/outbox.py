"""A session's outbox: the server events waiting for the socket, bounded for slow readers.

One writer task per connection (connection.py) takes events from here and sends them; everyone
else only puts. Two bounds hold a client that does not read: while `limit` events or
`max_bytes` bytes of frames are pending (the setting `realtime_max_outbox_bytes`), the
connection stops taking client events, so a client that sends without reading makes the session
hold no more than that (and one more event); while `audio_limit` audio deltas are pending
(each up to a second of audio) the response producing them waits in `put_audio`, and with it the
LM and the vocoder. Audio of a cancelled response can be taken back before it is sent.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Outgoing:
    text: str  # the event as its JSON frame
    on_sent: Callable[[], None] | None
    audio_of: str | None  # the response an audio delta belongs to


class Outbox:
    def __init__(
        self, limit: int = 1024, audio_limit: int = 16, max_bytes: int = 8 * 1024 * 1024
    ) -> None:
        self._items: deque[Outgoing] = deque()
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._limit = limit
        self._audio_limit = audio_limit
        self._max_bytes = max_bytes
        self._audio = 0
        self._bytes = 0  # characters of the pending frames (JSON is ASCII: one byte each)
        self._closed = False

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def full(self) -> bool:
        crowded = len(self._items) >= self._limit or self._bytes >= self._max_bytes
        return crowded and not self._closed

    def audio_full(self) -> bool:
        return self._audio >= self._audio_limit and not self._closed

    async def wait_for_room(self) -> None:
        await self._wait_until_not(self.full)

    async def wait_for_audio_room(self) -> None:
        await self._wait_until_not(self.audio_full)

    async def _wait_until_not(self, blocked: Callable[[], bool]) -> None:
        while blocked():
            self._changed.clear()
            await self._changed.wait()

    def put(
        self,
        event: dict[str, Any] | None,
        on_sent: Callable[[], None] | None = None,
        audio_of: str | None = None,
    ) -> None:
        """Queue an event; `None` (an event the dialect lacks) and events after close are lost."""
        if event is None or self._closed:
            return
        text = json.dumps(event, separators=(",", ":"))
        self._items.append(Outgoing(text, on_sent, audio_of))
        self._audio += audio_of is not None
        self._bytes += len(text)
        self._ready.set()

    async def put_audio(self, event: dict[str, Any], on_sent: Callable[[], None]) -> None:
        """Queue an audio delta once the client is not too far behind; `on_sent` once sent."""
        await self.wait_for_audio_room()
        self.put(event, on_sent, audio_of=event.get("response_id"))

    def drop_audio(self, response_id: str) -> None:
        self._items = deque(item for item in self._items if item.audio_of != response_id)
        self._audio = sum(item.audio_of is not None for item in self._items)
        self._bytes = sum(len(item.text) for item in self._items)
        self._changed.set()

    async def get(self) -> Outgoing | None:
        """The next event to send; `None` once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        self._audio -= item.audio_of is not None
        self._bytes -= len(item.text)
        self._changed.set()
        return item

    def close(self) -> None:
        self._closed = True
        self._ready.set()
        self._changed.set()
