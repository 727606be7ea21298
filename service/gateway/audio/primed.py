"""Read an output stream ahead until it is safe to answer 200, then replay it in full."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from service.gateway.engine import Finished, Output


class Primed:
    """An output stream read ahead until `ready(item)` holds, then replayed in full.

    Routes that stream call `await primed.start()` before returning the response, so a problem
    that shows up before the first useful output (an LM error, a refused voice) still becomes a
    proper HTTP error instead of an event in an already-started 200 stream.
    """

    def __init__(self, outputs: AsyncIterator[Output], ready: Callable[[Output], bool]) -> None:
        self._outputs = outputs
        self._ready = ready
        self._buffer: list[Output] = []

    async def start(self) -> None:
        try:
            async for item in self._outputs:
                self._buffer.append(item)
                if self._ready(item) or isinstance(item, Finished):
                    return
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await self._outputs.aclose()  # type: ignore[attr-defined]

    async def items(self) -> AsyncIterator[Output]:
        """The read-ahead outputs, then the rest; closing this closes the generation."""
        try:
            while self._buffer:
                yield self._buffer.pop(0)
            async for item in self._outputs:
                yield item
        finally:
            await self.aclose()
