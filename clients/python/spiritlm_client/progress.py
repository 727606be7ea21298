"""A progress line on stderr for long operations: spinner, elapsed time, bytes received.

The live line is drawn only on a terminal (it would litter logs and pipes); the one-line
summary at the end is printed either way unless the CLI runs with --quiet.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

FRAMES = "|/-\\"
INTERVAL = 0.1


def human_bytes(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1_000_000:.1f} MB"


class Progress:
    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        summary: bool = True,
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.summary = summary
        self.received = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Progress:
        self.started = time.monotonic()
        if self.live:
            self._thread = threading.Thread(target=self._draw_loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.stop()
        if self.summary and kind is None:
            self.stream.write(f"{self.label}: {self.status()}\n")
            self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def add(self, count: int) -> None:
        """Count received bytes."""
        self.received += count

    def status(self) -> str:
        received = f"{human_bytes(self.received)} in " if self.received else "done in "
        return f"{received}{self.elapsed:.1f} s"

    def stop(self) -> None:
        """Stop and erase the live line (e.g. before printing streamed text)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        with self._lock:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _draw_loop(self) -> None:
        frame = 0
        while not self._stop.wait(INTERVAL):
            received = f"  {human_bytes(self.received)}" if self.received else ""
            line = f"\r{FRAMES[frame % len(FRAMES)]} {self.label}  {self.elapsed:.1f} s{received}"
            with self._lock:
                self.stream.write(line + "\033[K")
                self.stream.flush()
            frame += 1
