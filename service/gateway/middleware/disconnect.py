"""Client disconnects cancel the request's work, on every route, streamed or not.

Once the body is in (`body_reader.py` hands it over whole), the connection is watched for
``http.disconnect``. A client that leaves before its response is complete gets its handler
cancelled: the cancellation reaches `Engine.run`, whose cleanup closes the LM worker's HTTP
stream (vLLM then aborts the request and frees its KV cache) and the speech worker's vocoder
stream, and any one-shot call to a worker (its connection is closed). The app itself still sees
the body first and a disconnect after it, as from the server.
"""

from __future__ import annotations

import asyncio
import logging

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("spiritlm.gateway")


class DisconnectMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body: list[Message] = []
        while True:
            message = await receive()
            body.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body.reverse()
        gone = anyio.Event()
        complete = False

        async def app_receive() -> Message:
            if body:
                return body.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracking_send(message: Message) -> None:
            nonlocal complete
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True

        with anyio.CancelScope() as handler:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone.set()
                if not complete:
                    log.info("client disconnected: %s %s cancelled", scope["method"], scope["path"])
                    handler.cancel()

            # A plain task, not a task group: errors of the app must leave this layer as they
            # are (a task group would wrap them in an ExceptionGroup).
            watcher = asyncio.create_task(watch())
            try:
                await self.app(scope, app_receive, tracking_send)
            finally:
                watcher.cancel()
