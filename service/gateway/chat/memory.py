"""What the chat route keeps between requests of a conversation.

* Generated audio turns: an assistant message in a later request may carry ``audio: {id}``
  instead of its content, and the history is rebuilt as the very speech the model produced (no
  re-encoding of lossy audio). The id holds that speech itself: the model and the speech token
  string, compressed and signed with `signing_key` (service/gateway/signing.py), so any gateway
  replica sharing the key accepts it, and nothing is stored. docs/deployment.md ("Signing key")
  says why this rather than a shared store.
* Encoded user audio: clients resend the whole history every turn, so each ``input_audio`` is
  encoded once and looked up by the hash of its bytes afterwards. This is a cache of this process
  only: another replica encodes the audio again, with the same result.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.gateway.signing import Signer, TokenError, TokenExpired, sealed_length

AUDIO_TTL_SECONDS = 3600
MAX_ENCODED_INPUTS = 512
AUDIO_ID_PREFIX = "audio_"
# The longest speech token is "[Huxxxxx]" (service/units/boundaries.py), and the longest model
# name an id may carry; with `max_tokens_limit` they bound an id's size.
MAX_SPEECH_TOKEN_CHARS = 9
MAX_MODEL_CHARS = 256


class AudioIdError(Exception):
    """An audio id that cannot be used; the message says why (no id, no field name)."""


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
        signer: Signer,
        *,
        max_tokens_limit: int,
        ttl: float = AUDIO_TTL_SECONDS,
        max_encoded_inputs: int = MAX_ENCODED_INPUTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.ttl = ttl
        self.clock = clock
        # An id never holds more than one reply of at most max_tokens_limit speech tokens.
        self.max_payload_bytes = MAX_MODEL_CHARS + 1 + max_tokens_limit * MAX_SPEECH_TOKEN_CHARS
        self.max_id_chars = sealed_length(self.max_payload_bytes, AUDIO_ID_PREFIX)
        self.max_tokens_limit = max_tokens_limit
        self._encoded = _ExpiringMap(ttl, max_encoded_inputs, clock)

    @classmethod
    def from_settings(cls, settings: Any) -> ChatMemory:
        return cls(Signer.from_settings(settings), max_tokens_limit=settings.max_tokens_limit)

    def seal_audio(self, model: str, tokens: str) -> tuple[str, int]:
        """The id of a generated audio turn, and its expiry (unix seconds)."""
        expires = int(self.clock() + self.ttl)
        payload = f"{model}\n{tokens}".encode()
        return self.signer.seal(AUDIO_ID_PREFIX, payload, expires), expires

    def get_audio(self, audio_id: str) -> StoredAudio:
        """The audio turn an id holds; AudioIdError when it is not one of ours or has expired."""
        if len(audio_id) > self.max_id_chars:
            raise AudioIdError(
                f"is longer than {self.max_id_chars} characters, the most an id of one reply of "
                f"max_tokens_limit={self.max_tokens_limit} tokens takes"
            )
        try:
            payload, expires = self.signer.open(
                AUDIO_ID_PREFIX,
                audio_id,
                max_chars=self.max_id_chars,
                max_payload_bytes=self.max_payload_bytes,
                now=self.clock(),
            )
        except TokenExpired:
            raise AudioIdError(
                f"has expired (generated audio can be referenced for {int(self.ttl)} s)"
            ) from None
        except TokenError as error:
            raise AudioIdError(
                f"is not an audio id made by this service ({error}); ids are signed with "
                "signing_key, which must be the same on every gateway replica"
            ) from None
        model, _, tokens = payload.decode("utf-8", errors="replace").partition("\n")
        return StoredAudio(model, tokens, expires)

    def encoded(self, model: str, audio: bytes) -> str | None:
        entry = self._encoded.get(_audio_key(model, audio))
        return entry[1] if entry is not None and isinstance(entry[1], str) else None

    def remember_encoded(self, model: str, audio: bytes, tokens: str) -> None:
        self._encoded.put(_audio_key(model, audio), tokens)


def _audio_key(model: str, audio: bytes) -> str:
    return f"{model}:{hashlib.sha256(audio).hexdigest()}"
