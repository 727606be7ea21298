"""Encode float audio for API responses, in one piece or streamed while it is produced.

Formats: wav (16-bit PCM), pcm (raw s16le), flac (16-bit), mp3, opus (in Ogg) and aac (ADTS).
Samples are clipped to [-1, 1]; 16-bit conversion is round(x * 32768) capped at 32767, the exact
inverse of the decoder's int16 / 32768. The lossy codecs are fed the clipped float samples.

One-shot files are written to a seekable buffer, so their headers carry the real length (wav
sizes, FLAC STREAMINFO, the mp3 Xing/LAME tag that lets decoders trim encoder delay). Streams are
written to a non-seekable sink: wav gets the 0xFFFFFFFF "unknown size" header streaming servers
use, and the FFmpeg muxers emit bytes as packets come out of the encoder.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np

from service.audio.pcm import float_to_int16, float_to_pcm16
from service.audio.resample import StreamResampler, resample

SUPPORTED_FORMATS = ("wav", "pcm", "flac", "mp3", "opus", "aac")
# Output rates offered for synthesized audio; others would need exotic resampling filters.
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
# The response formats the API offers (each may still lack an encoder: `available_formats`).
AudioFormat = Literal["wav", "pcm", "flac", "mp3", "opus", "aac"]

MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}


@dataclass(frozen=True)
class _CodecPlan:
    container: str
    encoders: tuple[str, ...]  # FFmpeg encoder names, first available wins
    sample_format: str  # what we hand the encoder
    bit_rate: int | None
    # Muxer options for streaming: Ogg otherwise holds packets back for up to a second per page.
    stream_options: tuple[tuple[str, str], ...] = ()


_CODECS = {
    "flac": _CodecPlan("flac", ("flac",), "s16", None),
    "mp3": _CodecPlan("mp3", ("libmp3lame",), "fltp", 64000),
    "opus": _CodecPlan("ogg", ("libopus",), "flt", 32000, (("page_duration", "100000"),)),
    "aac": _CodecPlan("adts", ("aac", "libfdk_aac"), "fltp", 64000),
}


def encode_audio(
    wav: np.ndarray, sample_rate: int, fmt: str, *, output_rate: int | None = None
) -> bytes:
    """Encode mono float audio at ``sample_rate`` as ``fmt``, resampled to ``output_rate``."""
    fmt = _check_format(fmt)
    samples = _prepare(wav)
    source_rate = _check_rate(sample_rate)
    rate = source_rate if output_rate is None else _check_rate(output_rate)
    if rate != source_rate:
        samples = np.clip(resample(samples, source_rate, rate), -1.0, 1.0)
    if fmt == "pcm":
        return float_to_pcm16(samples)
    if fmt == "wav":
        pcm = float_to_pcm16(samples)
        return _wav_header(rate, len(pcm)) + pcm
    buffer = io.BytesIO()
    encoder = _PyAVEncoder(fmt, rate, buffer, streaming=False)
    encoder.write(samples)
    encoder.close()
    return buffer.getvalue()


class StreamEncoder:
    """Incremental encoder: ``write`` returns the bytes available so far, ``close`` the rest.

    ``sample_rate`` is the output rate. Chunks are at ``input_rate`` (default: the output rate);
    when that differs they are resampled as one continuous signal, exactly as ``resample`` would.
    """

    def __init__(self, fmt: str, sample_rate: int, *, input_rate: int | None = None) -> None:
        self.format = _check_format(fmt)
        self.sample_rate = _check_rate(sample_rate)
        self.media_type = MEDIA_TYPES[self.format]
        source_rate = _check_rate(input_rate or sample_rate)
        self._resampler = (
            StreamResampler(source_rate, self.sample_rate)
            if source_rate != self.sample_rate
            else None
        )
        self._sink = _Sink()
        self._pyav: _PyAVEncoder | None = None
        self._header_sent = False
        self._closed = False
        if self.format in _CODECS:
            self._pyav = _PyAVEncoder(self.format, self.sample_rate, self._sink, streaming=True)

    def write(self, chunk: np.ndarray) -> bytes:
        if self._closed:
            raise ValueError("StreamEncoder is closed")
        samples = _prepare(chunk)
        if self._resampler is not None:
            samples = np.clip(self._resampler.write(samples), -1.0, 1.0)
        return self._encode(samples)

    def close(self) -> bytes:
        if self._closed:
            raise ValueError("StreamEncoder is closed")
        tail = _EMPTY
        if self._resampler is not None:
            tail = np.clip(self._resampler.close(), -1.0, 1.0)
        out = self._encode(tail)
        self._closed = True
        if self._pyav is not None:
            self._pyav.close()
            out += self._sink.take()
        return out

    def _encode(self, samples: np.ndarray) -> bytes:
        if self._pyav is not None:
            self._pyav.write(samples)
            return self._sink.take()
        out = float_to_pcm16(samples)
        if self.format == "wav" and not self._header_sent:
            self._header_sent = True
            out = _wav_header(self.sample_rate, None) + out
        return out


_EMPTY = np.zeros(0, dtype=np.float32)


class _Sink:
    """Write-only byte collector. It has no ``seek``, so FFmpeg treats the output as a stream."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _PyAVEncoder:
    """One mono audio stream encoded by FFmpeg into a container written to ``target``."""

    def __init__(self, fmt: str, rate: int, target: io.BytesIO | _Sink, *, streaming: bool) -> None:
        plan = _CODECS[fmt]
        codec = _codec_for(fmt, rate)
        options = dict(plan.stream_options) if streaming else {}
        self._container = av.open(target, mode="w", format=plan.container, options=options)
        self._stream = self._container.add_stream(codec.name, rate=rate, layout="mono")
        self._stream.codec_context.format = plan.sample_format
        if plan.bit_rate:
            self._stream.codec_context.bit_rate = plan.bit_rate
        self._plan = plan
        self._rate = rate
        self._written = 0
        # Write the container header now so that even empty audio gives a well-formed file.
        self._container.start_encoding()

    def write(self, samples: np.ndarray) -> None:
        if samples.size == 0:
            return
        if self._plan.sample_format == "s16":
            planes = float_to_int16(samples)[None, :]
        else:
            planes = samples[None, :]
        frame = av.AudioFrame.from_ndarray(planes, format=self._plan.sample_format, layout="mono")
        frame.sample_rate = self._rate
        frame.time_base = Fraction(1, self._rate)
        frame.pts = self._written
        self._written += samples.size
        self._mux(frame)

    def close(self) -> None:
        self._mux(None)
        self._container.close()

    def _mux(self, frame: av.AudioFrame | None) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


def _find_encoder(fmt: str, plan: _CodecPlan) -> av.Codec:
    for name in plan.encoders:
        try:
            return av.Codec(name, "w")
        except Exception:  # PyAV raises UnknownCodecError (a ValueError) for absent codecs
            continue
    names = " or ".join(plan.encoders)
    raise RuntimeError(f"{fmt} output needs FFmpeg's {names} encoder, which this PyAV build lacks")


class OutputFormatError(ValueError):
    """A response format and sample rate the encoders cannot produce together; `param` names
    the request field at fault."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def check_output_format(
    fmt: str,
    sample_rate: int,
    *,
    format_param: str = "response_format",
    rate_param: str = "sample_rate",
) -> None:
    """Refuse, before any work, audio that could not be encoded: an unknown format, one whose
    encoder this installation lacks, a rate outside SAMPLE_RATES, or one the format does not
    take (Opus: 8, 16, 24 and 48 kHz). Every pair it lets through encodes. The params name the
    request's fields in the error."""
    try:
        name = _check_format(fmt)
    except ValueError as error:
        raise OutputFormatError(str(error), format_param) from None
    try:
        check_sample_rate(sample_rate, rate_param)
    except ValueError as error:
        raise OutputFormatError(str(error), rate_param) from None
    if name in _CODECS:
        _codec_for(name, sample_rate, format_param, rate_param)


def _codec_for(
    fmt: str, rate: int, format_param: str = "format", rate_param: str = "sample_rate"
) -> av.Codec:
    """The FFmpeg encoder of `fmt`, if it takes `rate`; OutputFormatError otherwise."""
    try:
        codec = _find_encoder(fmt, _CODECS[fmt])
    except RuntimeError as error:
        raise OutputFormatError(str(error), format_param) from None
    if codec.audio_rates and rate not in codec.audio_rates:
        takes = ", ".join(str(r) for r in SAMPLE_RATES if r in codec.audio_rates)
        raise OutputFormatError(
            f"{fmt} cannot be encoded at {rate} Hz; {rate_param} must be one of {takes} for {fmt}",
            rate_param,
        )
    return codec


def available_formats() -> tuple[str, ...]:
    """Output formats whose encoder exists in this installation."""
    usable = []
    for fmt in SUPPORTED_FORMATS:
        if fmt in _CODECS:
            try:
                _find_encoder(fmt, _CODECS[fmt])
            except RuntimeError:
                continue
        usable.append(fmt)
    return tuple(usable)


def check_sample_rate(rate: int, param: str = "sample_rate") -> None:
    """Refuse an output rate outside SAMPLE_RATES: ValueError naming ``param`` and the choices."""
    if rate not in SAMPLE_RATES:
        rates = ", ".join(str(choice) for choice in SAMPLE_RATES)
        raise ValueError(f"{param} {rate} is not supported; use one of {rates}")


def _check_format(fmt: str) -> str:
    name = fmt.lower() if isinstance(fmt, str) else fmt
    if name not in SUPPORTED_FORMATS:
        raise ValueError(
            f"unsupported audio format {fmt!r}; supported: {', '.join(SUPPORTED_FORMATS)}"
        )
    return name


def _check_rate(rate: int) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {rate!r}")
    return int(rate)


def _prepare(wav: np.ndarray) -> np.ndarray:
    samples = np.asarray(wav, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"audio to encode must be 1-D (mono), got shape {samples.shape}")
    if not np.isfinite(samples).all():
        raise ValueError("audio to encode contains NaN or infinite samples")
    return np.clip(samples, -1.0, 1.0)


def _wav_header(rate: int, data_bytes: int | None) -> bytes:
    """44-byte PCM 16-bit mono header; ``None`` size writes 0xFFFFFFFF (length unknown)."""
    unknown = 0xFFFFFFFF
    riff_size = unknown if data_bytes is None else 36 + data_bytes
    data_size = unknown if data_bytes is None else data_bytes
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt_chunk))
        + fmt_chunk
        + b"data"
        + struct.pack("<I", data_size)
    )
