"""Python SDK of spiritlm-serve: `SpiritLM` (blocking) and `AsyncSpiritLM` (asyncio)."""

from spiritlm_client.async_client import AsyncSpiritLM
from spiritlm_client.calls import user_audio_message
from spiritlm_client.errors import SpiritLMConnectionError, SpiritLMError
from spiritlm_client.sync_client import SpiritLM
from spiritlm_client.types import (
    ChatDelta,
    ChatReply,
    Classification,
    GenerateEvent,
    Generation,
    Segment,
    Tokenized,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncSpiritLM",
    "ChatDelta",
    "ChatReply",
    "Classification",
    "GenerateEvent",
    "Generation",
    "Segment",
    "SpiritLM",
    "SpiritLMConnectionError",
    "SpiritLMError",
    "Tokenized",
    "user_audio_message",
]
