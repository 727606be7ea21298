"""`turn_detection.idle_timeout_ms`: ask for a reply when the user stays silent.

Time is the input audio's (session milliseconds of audio appended), like every other position
in the protocol, so it runs exactly as fast as the client streams audio. Idle time starts at
the first audio after the last reply finished or the user's last speech ended; while the user
speaks or a reply is in progress it does not run. When it reaches the timeout the session
sends ``input_audio_buffer.timeout_triggered`` (``audio_start_ms``: where the idle stretch
began, ``audio_end_ms``: now), commits what the input buffer holds as a user turn, and asks for
a reply as a turn the VAD ended would (connection.py).
"""

from __future__ import annotations


class IdleTimeout:
    def __init__(self) -> None:
        self.since_ms: int | None = None  # where the current idle stretch began

    def observe(self, now_ms: int, timeout_ms: int | None, busy: bool) -> tuple[int, int] | None:
        """After an append: the (start, end) of an idle stretch that reached the timeout."""
        if timeout_ms is None or busy or self.since_ms is None:
            self.since_ms = now_ms
            return None
        if now_ms - self.since_ms < timeout_ms:
            return None
        start, self.since_ms = self.since_ms, now_ms
        return start, now_ms
