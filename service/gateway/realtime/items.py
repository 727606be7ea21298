"""A session's conversation items: conversation.item.create, retrieve, delete and truncate, and
the events they emit.

The items themselves, and the prompt they make, are in conversation.py. The client edits the
history with these events; besides, the connection adds committed user turns (announced here,
`ConversationItems.announce`) and response.py the assistant's replies. A created item is
checked against the session's budget (budget.py) before any of it is decoded or kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from service.gateway.realtime.budget import SessionBudget, decoded_size
from service.gateway.realtime.conversation import Conversation, Item, Part, keep_speech_samples
from service.gateway.realtime.input_audio import Utterance
from service.gateway.realtime.protocol import (
    ContentIn,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    ProtocolError,
    ServerEvents,
    new_id,
)
from service.gateway.uploads import b64decode_field

Send = Callable[[dict[str, Any] | None], None]
# Starts encoding a WAV file to speech tokens on a speech worker; the task gives the tokens.
Encode = Callable[[bytes], asyncio.Task[str]]


class ConversationItems:
    def __init__(
        self,
        conversation: Conversation,
        events: ServerEvents,
        send: Send,
        encode: Encode,
        budget: SessionBudget,
    ) -> None:
        self.conversation = conversation
        self.events = events
        self.send = send
        self.encode = encode
        self.budget = budget

    def create(self, event: ItemCreate, input_rate: int) -> None:
        """conversation.item.create; user audio (pcm16 at `input_rate`) starts encoding now."""
        spec = event.item
        item_id = spec.id or new_id("item")
        if any(existing.id == item_id for existing in self.conversation.items):
            raise ProtocolError(
                "invalid_value", f"item id '{item_id}' already exists", param="item.id"
            )
        self._check_budget(spec.content, input_rate)
        parts = [
            self._part(content, spec.role, index, input_rate)
            for index, content in enumerate(spec.content)
        ]
        item = Item(item_id, spec.role, parts)
        try:
            previous = self.conversation.add(item, event.previous_item_id)
        except KeyError:
            raise ProtocolError(
                "item_not_found",
                f"previous_item_id '{event.previous_item_id}' is not in the conversation",
                param="previous_item_id",
            ) from None
        self.announce(item, previous)

    def _check_budget(self, contents: list[ContentIn], input_rate: int) -> None:
        """The item's text, audio and size against the session's budget, before decoding."""
        chars = sum(len(content.text or "") + len(content.transcript or "") for content in contents)
        self.budget.check_text(chars, "item.content")
        for index, content in enumerate(contents):
            if content.audio:
                param = f"item.content[{index}].audio"
                self.budget.check_audio_part(content.audio, input_rate, param)
        held = chars + sum(decoded_size(content.audio or "") for content in contents)
        self.budget.check_room(self.conversation, held, param="item")

    def _part(self, content: ContentIn, role: str, index: int, input_rate: int) -> Part:
        where = f"item.content[{index}]"
        if content.type in ("input_text", "text", "output_text"):
            if content.text is None:
                raise ProtocolError(
                    "missing_required_parameter", f"{where}.text is required", param=f"{where}.text"
                )
            return Part("text", text=content.text)
        if content.type == "input_audio" and role == "user":
            if not content.audio:
                raise ProtocolError(
                    "missing_required_parameter",
                    f"{where}.audio (base64 pcm16 at the input rate) is required",
                    param=f"{where}.audio",
                )
            pcm = b64decode_field(content.audio, f"{where}.audio")
            if len(pcm) % 2 or not pcm:
                raise ProtocolError(
                    "invalid_value",
                    f"{where}.audio: pcm16 needs a non-zero, even number of bytes",
                    param=f"{where}.audio",
                )
            wav = Utterance(pcm, 0, 0).wav(input_rate)
            part = Part("audio", text=content.transcript or "", pending_bytes=len(wav))
            part.encoding = self.encode(wav)
            return part
        raise ProtocolError(
            "invalid_value",
            f"{where}.type '{content.type}' is not supported in a {role} item "
            "(user: input_text, input_audio; system: input_text; assistant: output_text)",
            param=f"{where}.type",
        )

    def announce(self, item: Item, previous: str | None) -> None:
        """The events of an item added after `previous` (None: at the start)."""
        rendered = self.events.item(item)
        self.send(
            self.events.event("conversation.item.added", previous_item_id=previous, item=rendered)
        )
        self.send(
            self.events.event("conversation.item.done", previous_item_id=previous, item=rendered)
        )

    def _existing(self, item_id: str) -> Item:
        """The item `item_id`, or the `item_not_found` error the client gets."""
        try:
            return self.conversation.get(item_id)
        except KeyError:
            raise ProtocolError(
                "item_not_found", f"item '{item_id}' does not exist", param="item_id"
            ) from None

    def retrieve(self, event: ItemRetrieve) -> None:
        """conversation.item.retrieve: the item as the server holds it now."""
        item = self._existing(event.item_id)
        self.send(self.events.event("conversation.item.retrieved", item=self.events.item(item)))

    def delete(self, event: ItemDelete, responding: str | None) -> None:
        """conversation.item.delete; `responding` is the item of the response in progress."""
        if responding is not None and responding == event.item_id:
            raise ProtocolError(
                "invalid_value",
                "the item of the response in progress cannot be deleted",
                param="item_id",
            )
        self._existing(event.item_id)
        self.conversation.delete(event.item_id)
        self.send(self.events.event("conversation.item.deleted", item_id=event.item_id))

    def truncate(self, event: ItemTruncate, responding: str | None) -> None:
        """conversation.item.truncate: an assistant reply cut back to the audio heard; not the
        reply still being generated (the generation would go on writing past the cut):
        `response.cancel` it first."""
        if responding is not None and responding == event.item_id:
            raise ProtocolError(
                "invalid_value",
                "the item of the response in progress cannot be truncated; send response.cancel "
                "first",
                param="item_id",
            )
        item = self._existing(event.item_id)
        if item.role != "assistant" or event.content_index >= len(item.parts):
            raise ProtocolError(
                "invalid_value",
                "only an assistant item's audio part can be truncated",
                param="content_index",
            )
        part = item.parts[event.content_index]
        if part.kind != "audio":
            raise ProtocolError(
                "invalid_value",
                f"content {event.content_index} is not audio",
                param="content_index",
            )
        samples = event.audio_end_ms * part.sample_rate // 1000
        if samples > part.samples_sent:
            sent_ms = part.samples_sent * 1000 // max(1, part.sample_rate)
            raise ProtocolError(
                "invalid_value",
                f"audio_end_ms {event.audio_end_ms} is past the audio sent ({sent_ms} ms)",
                param="audio_end_ms",
            )
        keep_speech_samples(part, samples, self.conversation.samples_per_token(part.sample_rate))
        part.text = ""  # the transcript no longer matches what is kept
        self.send(
            self.events.event(
                "conversation.item.truncated",
                item_id=item.id,
                content_index=event.content_index,
                audio_end_ms=event.audio_end_ms,
            )
        )
