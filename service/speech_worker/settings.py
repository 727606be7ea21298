"""Settings of the speech worker process (env SPIRITLM_*, flags --field-name)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from service.checkpoints.layout import VARIANTS
from service.config import ModelName, Settings
from service.speech.kernel_cache import DEFAULT_KERNEL_CACHE_CAPACITY, MAX_KERNEL_CACHE_CAPACITY
from service.speech.precision import Precision, PrecisionChoice
from service.speech_worker.batcher import StreamingMode
from service.speech_worker.priority import DEADLINE_LEAD_SECONDS


class SpeechWorkerSettings(Settings):
    """What one speech worker serves and the limits it enforces."""

    # NoDecode: the env var is a plain comma-separated list, like the flag, not JSON.
    models: Annotated[list[ModelName], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated variants to serve (they share HuBERT); "
        "empty = the configured --model.",
    )
    # Its own name: the gateway's limit is `max_body_bytes`, and `up` hands both processes the
    # same environment.
    speech_max_body_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Largest accepted request body in bytes."
    )
    max_streams: int = Field(
        default=32, ge=1, description="Concurrent synthesis streams; more are refused with 429."
    )
    max_tokens: int = Field(
        default=100_000,
        ge=1,
        description="Most speech tokens in one decode request or one stream (a decode "
        "request's HuBERT units are also bounded by max_detokenize_units).",
    )
    inference_threads: int = Field(
        default=1,
        ge=1,
        description="Model calls run at once (each in a worker thread): encodes, one-shot "
        "decodes and vocoder passes; bounds torch's load. Streams plan their chunks (duration "
        "prediction of at most max_chunk_units units) on one more thread of their own.",
    )
    deadline_lead_seconds: float = Field(
        default=DEADLINE_LEAD_SECONDS,
        ge=0,
        le=2,
        description="A stream chunk whose listener runs out of audio within this many seconds "
        "(a first chunk: that has waited 2 s minus this, so at 2 a first chunk goes first at "
        "once, which made a playing reply stall in docs/benchmarks.md 'Deadlines') "
        "goes before all other model work, and an encode or one-shot decode in progress hands "
        "it the inference thread at its next layer boundary (at most about 0.2 s apart for a "
        "9 s turn at official size on a CPU, docs/benchmarks.md); results are the same. 0 = "
        "off: chunks wait for the calls in progress and queue in arrival order.",
    )
    max_chunk_units: int = Field(
        default=0,
        ge=0,
        description="Most HuBERT units one streaming chunk may take when units are waiting (a "
        "stream that fell behind, or one that held back: stream_lead_seconds): one vocoder "
        "window then covers them all instead of one per chunk_units; the audio is the same. "
        "A chunk takes up to max(chunk_units, units its stream emitted before it), so a stream "
        "reaches this cap by doubling, and also the ready units that still fit in the length "
        "its vocoder pass is padded to (free audio; never past this cap). 0 = 4 x chunk_units "
        "(100 at the default); "
        "equal to chunk_units = no coalescing; less than chunk_units is refused.",
    )
    stream_lead_seconds: float = Field(
        default=0.0,
        ge=0,
        le=30,
        description="A stream whose listener has more than this many seconds of audio left to "
        "play waits before rendering more, so the units that arrive meanwhile go into fewer, "
        "larger chunks (a window recomputes the vocoder's receptive field; incremental streams "
        "save little by it, vocoder_streaming). 0 (default) = "
        "render units as soon as they arrive: held-back chunks are large, and a gateway whose "
        "client stops reading then holds more audio (tests/test_faults.py). The first chunk "
        "never waits.",
    )
    vocoder_batch_size: int = Field(
        default=0,
        ge=0,
        description="Most stream chunks rendered in one vocoder forward pass (the most urgent "
        "first); 0 = 1 on a CPU, where batching saves nothing, and 32 on a GPU.",
    )
    vocoder_streaming: StreamingMode = Field(
        default="auto",
        description="How a stream's chunks are vocoded. incremental: each stream keeps what "
        "every vocoder layer still needs from its input between chunks, so no frame is "
        "computed twice (about half the work of windows at official size, "
        "docs/benchmarks.md); its chunks are not batched across streams. windows: each chunk is "
        "a window that recomputes the vocoder's receptive field, and windows of several "
        "streams share forward passes (vocoder_batch_size). auto = incremental where chunks "
        "are rendered one per pass (vocoder_batch_size 1, a CPU's default), else windows. The "
        "audio is the same either way, up to float rounding.",
    )
    vocoder_dtype: Precision = Field(
        default="float32",
        description="Precision of the vocoder's conv stack. float32 matches the reference; "
        "bfloat16 is about 4.5x faster on a CPU with AMX, where its convolutions run "
        "channels-last (not measured on GPUs), with a small audio error (docs/benchmarks.md, "
        "'Reduced precision').",
    )
    encoder_dtype: Precision = Field(
        default="float32",
        description="Precision of the speech tokenizer's two transformers (HuBERT and the "
        "expressive style encoder). float32 matches the reference's units; bfloat16 encodes "
        "2-2.5x faster on a CPU with AMX (not measured on GPUs), and some units change "
        "(docs/benchmarks.md, 'Reduced precision').",
    )
    realtime_encoder_dtype: PrecisionChoice = Field(
        default="auto",
        description="Precision of the encoders for the turns of realtime conversations, which "
        "a spoken reply waits for (POST /v1/encode?realtime=true). auto = bfloat16 on a CPU "
        "with native bfloat16 (AMX, or AVX512-BF16: not measured without AMX), else "
        "encoder_dtype (GPUs too). REST "
        "endpoints, the CLI and transcription sessions always use encoder_dtype. bfloat16 "
        "encodes 2-2.5x faster and changes a few units (docs/realtime.md#encoder-precision).",
    )
    kernel_cache_capacity: int = Field(
        default=DEFAULT_KERNEL_CACHE_CAPACITY,
        ge=0,
        le=MAX_KERNEL_CACHE_CAPACITY,
        description="Most compiled CPU kernels (oneDNN primitives: one per layer, input length, "
        "precision and layout) the worker keeps; it sets ONEDNN_PRIMITIVE_CACHE_CAPACITY before "
        "its models load, unless the environment sets that itself. The official-size vocoder's "
        "streaming calls need about 2,000; with oneDNN's default of 1024 a stream's first chunk "
        "rebuilt its kernels, 2-2.6x slower (docs/benchmarks.md, 'All of vLLM on its own cores, "
        "and the kernel cache'). Each kept kernel costs about 50 KB. 0 = oneDNN's default.",
    )
    # The gateway's setting of the same name bounds /v1/speech/detokenize, which calls
    # /v1/decode; one name, so `up`'s shared environment sets both.
    max_detokenize_units: int = Field(
        default=2500,
        ge=1,
        description="Most HuBERT units in one POST /v1/decode request (one-shot synthesis holds "
        "all of its audio and activations at once); more are refused with 400 before any work. "
        "Streams are bounded by max_tokens.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _chunks_ordered(self) -> SpeechWorkerSettings:
        if not self.max_chunk_units:
            self.max_chunk_units = 4 * self.chunk_units
        elif self.max_chunk_units < self.chunk_units:
            raise ValueError(
                f"max_chunk_units ({self.max_chunk_units}) must be at least chunk_units "
                f"({self.chunk_units})"
            )
        return self

    def served_models(self) -> list[str]:
        """The variants to load, in the usual order, without repeats."""
        names = self.models or [self.model]
        return [name for name in VARIANTS if name in names]

    def default_model(self) -> str:
        """The model of requests that name none: --model when served, else the first served."""
        served = self.served_models()
        return self.model if self.model in served else served[0]
