"""The speech stacks one worker serves, loaded once at start-up."""

from __future__ import annotations

import logging
import time

from service.checkpoints.make import check_files, resolve_layout
from service.config import resolve_device
from service.cpus import cpu_flags, native_bfloat16
from service.speech.kernel_cache import keep_kernels
from service.speech.pipeline import SpeechStack
from service.speech.precision import Precision, PrecisionChoice
from service.speech_worker.batcher import default_batch_size, incremental_streams
from service.speech_worker.protocol import WorkerRequestError
from service.speech_worker.settings import SpeechWorkerSettings

log = logging.getLogger("spiritlm.speech_worker")


class SpeechModels:
    """Loads the served variants (they share HuBERT) and looks them up by request model name."""

    def __init__(self, settings: SpeechWorkerSettings) -> None:
        self.settings = settings
        # Before any model call, and on the thread that creates the app: `load` runs on another.
        keep_kernels(settings.kernel_cache_capacity)
        self.names = settings.served_models()
        self.default = settings.default_model()
        self.device = resolve_device(settings.device)
        # How streams use the vocoder, which decides what to warm up.
        self.vocoder_batch_size = settings.vocoder_batch_size or default_batch_size(self.device)
        self.incremental = incremental_streams(settings.vocoder_streaming, self.vocoder_batch_size)
        self.stacks: dict[str, SpeechStack] = {}
        # The same stacks with the encoders realtime turns use (`realtime_encoder_dtype`); the
        # same objects where that precision is `encoder_dtype`.
        self.realtime_encoder_dtype = realtime_precision(
            settings.realtime_encoder_dtype, settings.encoder_dtype, self.device, cpu_flags()
        )
        self.realtime_stacks: dict[str, SpeechStack] = {}
        # Per model, the sorted HuBERT units of silence (learnt at load time; see SpeechStack).
        self.silence: dict[str, list[int]] = {}
        self.ready = False
        self.failure: str | None = None
        self.loading: str | None = None

    def load(self) -> None:
        """Blocking: resolve the checkpoints and load every model (run it in a thread)."""
        started = time.monotonic()
        _log_precision(
            self.device,
            {
                "encoder_dtype": self.settings.encoder_dtype,
                "realtime_encoder_dtype": self.realtime_encoder_dtype,
                "vocoder_dtype": self.settings.vocoder_dtype,
            },
        )
        try:
            self.loading = "checkpoints"
            layout = resolve_layout(
                self.settings.checkpoints_dir, self.settings.cache_dir, progress=log.info
            )
            for name in self.names:
                check_files(layout, name, lm=False, speech=True)
            stacks = {}
            realtime_stacks = {}
            silence = {}
            for name in self.names:
                self.loading = name
                log.info("loading %s speech models from %s on %s", name, layout.root, self.device)
                stack = SpeechStack(
                    layout,
                    name,
                    device=self.device,
                    encoder_dtype=self.settings.encoder_dtype,
                    vocoder_dtype=self.settings.vocoder_dtype,
                )
                stack.load()
                self._warm_up(stack)
                stacks[name] = stack
                realtime_stacks[name] = self._realtime_stack(stack)
                silence[name] = sorted(stack.silence_units())
                log.info("%s: %d HuBERT units are silence", name, len(silence[name]))
        except Exception as error:
            self.failure = f"loading speech models failed: {error}"
            log.exception(self.failure)
            raise
        finally:
            self.loading = None
        self.stacks = stacks
        self.realtime_stacks = realtime_stacks
        self.silence = silence
        self.ready = True
        log.info("speech models ready (%s) in %.1f s", ", ".join(self.names), _since(started))

    def _realtime_stack(self, stack: SpeechStack) -> SpeechStack:
        """`stack` with realtime turns' encoders: only they are loaded again (the loaders
        share the quantizer, pitch tokenizer and vocoder, service/speech/pipeline.py)."""
        if self.realtime_encoder_dtype == stack.encoder_dtype:
            return stack
        realtime = SpeechStack(
            stack.layout,
            stack.variant,
            device=self.device,
            encoder_dtype=self.realtime_encoder_dtype,
            vocoder_dtype=stack.vocoder_dtype,
        )
        realtime.load()
        realtime.silence_units()  # builds its encoders' kernels, as the float32 stack's are
        return realtime

    def _warm_up(self, stack: SpeechStack) -> None:
        """Build the vocoder's kernels for the lengths streams use, before serving."""
        started = time.monotonic()
        if self.incremental:
            passes = stack.vocoder.warm_up_incremental()
        else:
            passes = stack.vocoder.warm_up_streams(self.settings.max_chunk_units)
        seconds = _since(started)
        log.info("%s: vocoder warmed up in %d passes in %.1f s", stack.variant, passes, seconds)

    def status(self) -> str:
        if self.failure:
            return self.failure
        if self.ready:
            return "ready"
        return f"loading ({self.loading or 'starting'})"

    def get(self, name: str | None, *, realtime: bool = False) -> SpeechStack:
        """The stack of a request's model; 404 for a model not served, 503 while loading.
        `realtime`: with the encoders of realtime turns (`realtime_encoder_dtype`)."""
        name = name or self.default
        if name not in self.names:
            raise WorkerRequestError(
                404,
                f"The model '{name}' does not exist or is not served by this speech worker "
                f"(served: {', '.join(self.names)})",
                param="model",
                code="model_not_found",
            )
        if not self.ready:
            raise WorkerRequestError(
                503, f"speech worker not ready: {self.status()}", code="not_ready"
            )
        return (self.realtime_stacks if realtime else self.stacks)[name]


def realtime_precision(
    setting: PrecisionChoice, encoder_dtype: Precision, device: str, flags: frozenset[str]
) -> Precision:
    """The encoders' precision for realtime turns: `auto` takes bfloat16 on a CPU that runs it
    natively, where float32 encodes queue on the speech core (2-2.5x faster on this project's
    AMX CPUs, docs/benchmarks.md "Reduced precision"; AVX512-BF16 without AMX is not
    measured; emulated, bfloat16 is slower than float32), and
    `encoder_dtype` elsewhere: a GPU encodes a turn in float32 in a small share of a reply's
    first-audio time, which would not pay for changed units (not measured, no GPU here)."""
    if setting != "auto":
        return setting
    if device.startswith("cpu") and native_bfloat16(flags):
        return "bfloat16"
    return encoder_dtype


def _log_precision(device: str, dtypes: dict[str, Precision]) -> None:
    """Say what the CPU offers for the models' precisions (docs/benchmarks.md measures both)."""
    chosen = ", ".join(f"{setting} {dtype}" for setting, dtype in dtypes.items())
    if not device.startswith("cpu"):
        log.info("precision: %s on %s", chosen, device)
        return
    native = native_bfloat16(cpu_flags())
    offer = f"native bfloat16 ({', '.join(native)})" if native else "no native bfloat16"
    log.info("precision: %s; this CPU has %s", chosen, offer)
    for setting, dtype in dtypes.items():
        if dtype == "bfloat16" and not native:
            log.warning("%s=bfloat16 without native bfloat16 is slower than float32", setting)


def _since(started: float) -> float:
    return time.monotonic() - started
