"""What one realtime session may make the gateway hold, checked before it is held.

Every bound is a gateway setting (docs/security.md, docs/realtime.md); going over one is an
``error`` event naming the setting, and the session goes on:

* conversation items (`realtime_max_items`): items the client creates, committed user turns and
  the model's replies all count; delete items to make room;
* bytes of history (`realtime_max_history_bytes`): the text and speech tokens of every item, and
  the audio of user turns while a speech worker encodes it (`Conversation.held_bytes`);
* characters of text per item (`max_prompt_chars`, the bound of any LM prompt's text), checked
  on the parsed event, before the item exists;
* input audio per append and per audio part (`realtime_max_buffer_seconds` at the session's
  input rate, in pcm16 bytes), checked on the base64 length before anything is decoded.

The outbox's byte bound (`realtime_max_outbox_bytes`, outbox.py) bounds what a client that does
not read makes the session queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.gateway.realtime.conversation import Conversation
from service.gateway.realtime.input_audio import BYTES_PER_SAMPLE, InputAudio
from service.gateway.realtime.protocol import ProtocolError


def decoded_size(b64: str) -> int:
    """The bytes a base64 string decodes to, at most (known before decoding it)."""
    return (len(b64) + 3) // 4 * 3


@dataclass(frozen=True)
class SessionBudget:
    max_items: int
    max_history_bytes: int
    max_item_chars: int
    max_buffer_seconds: float
    max_outbox_bytes: int

    @classmethod
    def from_settings(cls, settings: Any) -> SessionBudget:
        return cls(
            max_items=settings.realtime_max_items,
            max_history_bytes=settings.realtime_max_history_bytes,
            max_item_chars=settings.max_prompt_chars,
            max_buffer_seconds=settings.realtime_max_buffer_seconds,
            max_outbox_bytes=settings.realtime_max_outbox_bytes,
        )

    # ---- the conversation

    def room_for(
        self, conversation: Conversation, item_bytes: int = 0, param: str | None = None
    ) -> ProtocolError | None:
        """Why one more item of `item_bytes` cannot join the conversation, or None if it can."""
        count = len(conversation.items)
        if count >= self.max_items:
            return ProtocolError(
                "conversation_item_limit",
                f"the conversation holds {count} items, the most a session may hold "
                f"(realtime_max_items = {self.max_items}); delete items with "
                "conversation.item.delete to add more",
                param=param,
            )
        held = conversation.held_bytes()
        if held + item_bytes > self.max_history_bytes:
            return ProtocolError(
                "conversation_history_limit",
                f"the conversation holds {held} bytes of history and this item needs "
                f"{item_bytes} more; a session holds at most {self.max_history_bytes} bytes "
                "(realtime_max_history_bytes); delete items with conversation.item.delete to "
                "add more",
                param=param,
            )
        return None

    def check_room(
        self, conversation: Conversation, item_bytes: int = 0, param: str | None = None
    ) -> None:
        problem = self.room_for(conversation, item_bytes, param)
        if problem is not None:
            raise problem

    def check_text(self, chars: int, param: str) -> None:
        if chars > self.max_item_chars:
            raise ProtocolError(
                "string_above_max_length",
                f"{param} has {chars} characters of text; an item may have at most "
                f"{self.max_item_chars} (max_prompt_chars)",
                param=param,
            )

    # ---- input audio

    def max_audio_bytes(self, rate: int) -> int:
        return int(self.max_buffer_seconds * rate) * BYTES_PER_SAMPLE

    def check_audio_part(self, b64: str, rate: int, param: str) -> None:
        """An audio content part (base64 pcm16 at `rate`) is no longer than the buffer."""
        if decoded_size(b64) > self.max_audio_bytes(rate):
            raise ProtocolError(
                "audio_too_long",
                f"{param} holds about {self._seconds(b64, rate):.1f} s of audio; an audio part "
                f"may hold at most {self.max_buffer_seconds:g} s (realtime_max_buffer_seconds)",
                param=param,
            )

    def check_append(self, b64: str, buffer: InputAudio) -> None:
        """An append fits the input buffer; without turn detection, with what it holds."""
        held = buffer.buffered_samples * BYTES_PER_SAMPLE if buffer.vad is None else 0
        if held + decoded_size(b64) > self.max_audio_bytes(buffer.rate):
            raise ProtocolError(
                "input_audio_buffer_full",
                f"this append carries about {self._seconds(b64, buffer.rate):.1f} s of audio; "
                f"the input audio buffer holds at most {self.max_buffer_seconds:g} s "
                "(realtime_max_buffer_seconds): send smaller appends, and commit or clear it",
                param="audio",
            )

    @staticmethod
    def _seconds(b64: str, rate: int) -> float:
        return decoded_size(b64) / BYTES_PER_SAMPLE / rate
