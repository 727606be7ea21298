"""What the chat route remembers between requests of a conversation, in this gateway's memory.

* Generated audio turns: an assistant message in a later request may carry ``audio: {id}``
  instead of its content; the id maps to the speech token string that was generated, so the
  history is rebuilt as the very speech the model produced (no re-encoding of lossy audio).
* Encoded user audio: clients resend the whole history every turn, so each ``input_audio`` is
  encoded once and looked up by the hash of its bytes afterwards.

Entries expire after `ttl` seconds and the oldest go first beyond `max_items`. The memory is
per gateway process: behind several gateway replicas, route a conversation to one replica
(sticky sessions) or an audio id from another replica is unknown (400).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

AUDIO_TTL_SECONDS = 3600
MAX_AUDIO_TURNS = 4096
MAX_ENCODED_INPUTS = 512


@dataclass(frozen=True)
class StoredAudio:
    model: str
    tokens: str
    expires_at: int


class _ExpiringMap:
    """Insertion-ordered map whose entries expire; re-putting a key makes it the newest."""

    def __init__(self, ttl: float, max_items: int, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self.clock = clock
        self._items: OrderedDict[str, tuple[float, object]] = OrderedDict()

    def put(self, key: str, value: object) -> float:
        expires = self.clock() + self.ttl
        self._items.pop(key, None)
        self._items[key] = (expires, value)
        self._evict()
        return expires

    def get(self, key: str) -> tuple[float, object] | None:
        """(expiry, value) of a live entry."""
        entry = self._items.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._items[key]
            return None
        return entry

    def __len__(self) -> int:
        return len(self._items)

    def _evict(self) -> None:
        now = self.clock()
        # Entries share one ttl, so expiry order is insertion order: stop at the first live one.
        while self._items:
            key, (expires, _) = next(iter(self._items.items()))
            if expires > now and len(self._items) <= self.max_items:
                break
            del self._items[key]


class ChatMemory:
    def __init__(
        self,
        *,
        ttl: float = AUDIO_TTL_SECONDS,
        max_audio_turns: int = MAX_AUDIO_TURNS,
        max_encoded_inputs: int = MAX_ENCODED_INPUTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self._audio = _ExpiringMap(ttl, max_audio_turns, clock)
        self._encoded = _ExpiringMap(ttl, max_encoded_inputs, clock)

    @staticmethod
    def new_audio_id() -> str:
        return f"audio_{uuid.uuid4().hex}"

    def put_audio(self, audio_id: str, model: str, tokens: str) -> int:
        """Remember a generated audio turn; returns its expiry (unix seconds)."""
        return int(self._audio.put(audio_id, (model, tokens)))

    def get_audio(self, audio_id: str) -> StoredAudio | None:
        entry = self._audio.get(audio_id)
        if entry is None:
            return None
        expires, (model, tokens) = entry  # type: ignore[misc]
        return StoredAudio(model, tokens, int(expires))

    def encoded(self, model: str, audio: bytes) -> str | None:
        entry = self._encoded.get(_audio_key(model, audio))
        return entry[1] if entry is not None and isinstance(entry[1], str) else None

    def remember_encoded(self, model: str, audio: bytes, tokens: str) -> None:
        self._encoded.put(_audio_key(model, audio), tokens)


def _audio_key(model: str, audio: bytes) -> str:
    return f"{model}:{hashlib.sha256(audio).hexdigest()}"
