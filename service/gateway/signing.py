"""Self-contained, signed tokens: what one gateway replica hands out and any replica takes back.

Chat audio ids (chat/memory.py) and realtime client secrets (realtime/client_secrets.py) carry
their content inside the token instead of pointing into one process's memory, so a deployment
of several gateway replicas behind a plain Service (deploy/) needs no sticky routing and no
shared store. A token is

    <prefix> + base64url(version | expires_at | zlib(payload) | HMAC-SHA256)

with the MAC over the prefix and everything before it, keyed by the setting `signing_key`
(shared by all replicas). The prefix separates the kinds: an audio id is never a client secret.
The payload is readable by whoever holds the token (compressed, not encrypted): it holds only
what its holder already has (the speech units of a reply they received, the session
configuration they asked for). docs/deployment.md ("Signing key") argues the choice.

Tokens are small (bounded by their callers before anything is decoded), so sealing and opening
cost microseconds and run inline.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("spiritlm.gateway.signing")

VERSION = 1
_HEADER = struct.Struct(">BQ")  # version, expires_at (unix seconds)
_MAC_BYTES = hashlib.sha256().digest_size

_process_key: bytes | None = None


class TokenError(Exception):
    """A token that is malformed, too long, or not signed by our key."""


class TokenExpired(TokenError):
    """A genuine token past its expiry."""


def _random_process_key() -> bytes:
    global _process_key
    if _process_key is None:
        _process_key = secrets.token_bytes(32)
        log.warning(
            "no signing_key set: chat audio ids and realtime client secrets are signed with a "
            "random key of this process and work only here; set SPIRITLM_SIGNING_KEY (the same "
            "on every replica) when running several gateways"
        )
    return _process_key


def sealed_length(payload_bytes: int, prefix: str) -> int:
    """The most characters a token with a payload of `payload_bytes` can take (zlib's worst
    case stores the data uncompressed: 5 bytes per 16 KiB block, plus its 6-byte frame)."""
    compressed = payload_bytes + 5 * (payload_bytes // 16384 + 1) + 6
    raw = _HEADER.size + compressed + _MAC_BYTES
    return len(prefix) + (raw * 4 + 2) // 3


@dataclass(frozen=True)
class Signer:
    key: bytes

    @classmethod
    def from_settings(cls, settings: Any) -> Signer:
        """The configured `signing_key`, else one random key for the life of this process."""
        configured = settings.signing_key.get_secret_value()
        return cls(configured.encode() if configured else _random_process_key())

    def seal(self, prefix: str, payload: bytes, expires_at: int) -> str:
        body = _HEADER.pack(VERSION, expires_at) + zlib.compress(payload, 6)
        mac = hmac.new(self.key, prefix.encode() + body, hashlib.sha256).digest()
        return prefix + base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()

    def open(
        self,
        prefix: str,
        token: str,
        *,
        max_chars: int,
        max_payload_bytes: int,
        now: float | None = None,
    ) -> tuple[bytes, int]:
        """(payload, expires_at) of a token we sealed; TokenError otherwise."""
        if len(token) > max_chars:
            raise TokenError(f"longer than {max_chars} characters")
        if not token.startswith(prefix):
            raise TokenError(f"does not start with '{prefix}'")
        text = token[len(prefix) :]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("is not base64url") from None
        if len(raw) < _HEADER.size + _MAC_BYTES:
            raise TokenError("is too short")
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        expected = hmac.new(self.key, prefix.encode() + body, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise TokenError("has an invalid signature (altered, or signed with another key)")
        version, expires_at = _HEADER.unpack_from(body)
        if version != VERSION:
            raise TokenError(f"has an unknown version {version}")
        if expires_at <= (time.time() if now is None else now):
            raise TokenExpired("has expired")
        inflater = zlib.decompressobj()
        try:
            payload = inflater.decompress(body[_HEADER.size :], max_payload_bytes)
        except zlib.error:
            raise TokenError("has a corrupt payload") from None
        if inflater.unconsumed_tail or not inflater.eof:
            raise TokenError(f"holds more than {max_payload_bytes} bytes")
        return payload, expires_at
