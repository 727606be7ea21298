"""Server voice activity detection: Silero VAD's model, loaded from its pip package.

The `silero-vad` wheel ships the model as a TorchScript file (``silero_vad/data/silero_vad.jit``).
Its Python package imports torchaudio helpers, which cannot load here, so the file is located
with `importlib.util.find_spec` (which does not run the package) and loaded with
`torch.jit.load`. Only the 16 kHz sub-module is used, called functionally as
``(context + window, state) -> (probability, state)``, so one loaded model serves every session
and each session keeps its own recurrent state.

Turn taking follows the usual Silero rule: speech starts at the first 32 ms window whose
probability reaches `threshold`; it stops once the probability has stayed below
``threshold - 0.15`` for `silence_duration_ms`. A silence that has lasted `PAUSE_MS` (at most
half of that) is reported as a pause first: if it goes on, the turn ends exactly where the
pause began, so work on the utterance can start before the turn is over. Times are
milliseconds of session audio, counted from the first sample the client appended (as the
realtime protocol reports them).
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from service.audio.resample import StreamResampler
from service.errors import CheckpointError

VAD_RATE = 16000
WINDOW = 512  # samples per model call at 16 kHz (32 ms), fixed by the model
CONTEXT = 64  # samples of the previous window the model reads first
STATE_SHAPE = (2, 1, 128)
HYSTERESIS = 0.15  # speech ends below threshold - HYSTERESIS (Silero's own rule)
PAUSE_MS = 300  # silence reported as a pause (at most half of silence_duration_ms)
PACKAGE = "silero-vad"

_lock = threading.Lock()
_model: torch.jit.ScriptModule | None = None


def model_path() -> Path:
    """Where the installed silero-vad wheel keeps its TorchScript model."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            PACKAGE,
            "the silero-vad package is not installed; install it (pip install silero-vad) "
            "to use server VAD, or set turn_detection to null and commit turns yourself",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.jit"
    if not path.is_file():
        raise CheckpointError(path, "silero-vad is installed but its model file is missing")
    return path


def load_model() -> torch.jit.ScriptModule:
    """The shared 16 kHz model, loaded on first use."""
    global _model
    with _lock:
        if _model is None:
            path = model_path()
            try:
                with warnings.catch_warnings():
                    # The wheel ships TorchScript; torch now nudges towards torch.export.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    loaded = torch.jit.load(str(path), map_location="cpu")
            except (RuntimeError, OSError) as error:
                raise CheckpointError(path, f"cannot load the VAD model: {error}") from error
            # A 32 ms window is a few microseconds of arithmetic; intra-op threads only add
            # contention when many sessions run VAD at once on a small CPU (measured: 1 ms
            # per window with one thread, 30-60 ms with two under load). The gateway does no
            # other heavy torch work, so one thread per op is what scales with sessions.
            torch.set_num_threads(1)
            _model = loaded.eval()
        return _model


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int


@dataclass(frozen=True)
class SpeechPaused:
    """Silence has begun at `audio_end_ms`; if it lasts, the turn ends exactly there."""

    audio_end_ms: int


VadEvent = SpeechStarted | SpeechStopped | SpeechPaused


class VadStream:
    """One session's detector: feed input-rate audio, get speech start/stop events."""

    def __init__(self, settings: VadSettings, input_rate: int, *, offset_ms: int = 0) -> None:
        self.settings = settings
        self.speaking = False
        self._model = load_model()
        self._resampler = StreamResampler(input_rate, VAD_RATE)
        self._pending = np.zeros(0, dtype=np.float32)
        self._state = torch.zeros(STATE_SHAPE)
        self._context = torch.zeros(1, CONTEXT)
        # 16 kHz samples consumed, plus where this stream starts on the session's clock.
        self._samples = 0
        self._offset_ms = offset_ms
        self._silence_since: int | None = None
        self._pause_reported = False
        # A pause this long is reported (a chance to start work on the turn early).
        self._pause_ms = min(PAUSE_MS, settings.silence_duration_ms // 2)

    def feed(self, audio: np.ndarray) -> list[VadEvent]:
        """Float samples at the input rate; CPU-bound (run it off the event loop)."""
        resampled = self._resampler.write(audio)
        self._pending = np.concatenate([self._pending, resampled])
        events: list[VadEvent] = []
        with torch.inference_mode():
            while self._pending.size >= WINDOW:
                window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
                event = self._step(self._probability(window))
                if event is not None:
                    events.append(event)
        return events

    @property
    def paused(self) -> bool:
        """Whether the speaker is in a pause already reported (`SpeechPaused`) and not over."""
        return self.speaking and self._pause_reported

    def force_stop(self) -> SpeechStopped | None:
        """End the current utterance now (e.g. the input buffer is full)."""
        if not self.speaking:
            return None
        self.speaking = False
        self._silence_since = None
        self._pause_reported = False
        return SpeechStopped(self.now_ms())

    def now_ms(self) -> int:
        return self._offset_ms + self._samples * 1000 // VAD_RATE

    def _probability(self, window: np.ndarray) -> float:
        chunk = torch.from_numpy(window.copy())[None]
        joined = torch.cat([self._context, chunk], dim=1)
        out, self._state = self._model._model(joined, self._state)
        self._context = joined[:, -CONTEXT:]
        self._samples += WINDOW
        return float(out.reshape(-1)[0])

    def _step(self, probability: float) -> VadEvent | None:
        now = self.now_ms()
        start = now - WINDOW * 1000 // VAD_RATE
        threshold = self.settings.threshold
        if not self.speaking:
            if probability >= threshold:
                self.speaking = True
                self._silence_since = None
                return SpeechStarted(start)
            return None
        if probability >= threshold:
            self._silence_since = None
            self._pause_reported = False
        elif probability < threshold - HYSTERESIS and self._silence_since is None:
            self._silence_since = start
        if self._silence_since is None:
            return None
        silent = now - self._silence_since
        if silent >= self.settings.silence_duration_ms:
            self.speaking = False
            end = self._silence_since
            self._silence_since = None
            self._pause_reported = False
            return SpeechStopped(end)
        if silent >= self._pause_ms and not self._pause_reported:
            self._pause_reported = True
            return SpeechPaused(self._silence_since)
        return None
