"""Route of POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse

from service.gateway.chat.memory import ChatMemory
from service.gateway.chat.protocol import ChatCompletion, ChatCompletionRequest
from service.gateway.chat.serving import chat_completion
from service.gateway.state import GatewayState, gateway_state
from service.gateway.uploads import require_json

router = APIRouter()


def chat_memory(request: Request) -> ChatMemory:
    """One memory per app, created on first use (the app's core knows nothing of chat)."""
    memory = getattr(request.app.state, "chat_memory", None)
    if memory is None:
        memory = ChatMemory.from_settings(request.app.state.gateway.settings)
        request.app.state.chat_memory = memory
    return memory


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    tags=["openai"],
    dependencies=[Depends(require_json)],
)
async def create_chat_completion(
    request: ChatCompletionRequest,
    state: GatewayState = Depends(gateway_state),
    memory: ChatMemory = Depends(chat_memory),
    x_session_id: str | None = Header(default=None, max_length=256),
) -> ChatCompletion | StreamingResponse:
    """OpenAI chat completions; `modalities: ["text", "audio"]` answers in speech.

    `X-Session-Id` (or `user`) keeps a conversation on one LM replica for prefix-cache reuse.
    """
    return await chat_completion(request, state, memory, x_session_id)
