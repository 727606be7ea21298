"""Decode uploaded audio bytes to the model's input: 1-D float32, mono, 16 kHz.

The input format is described in docs/format.md#audio-input.

The container is sniffed from the leading bytes (a filename is only used in messages).
wav/rf64/w64, aiff, flac, ogg (vorbis, opus) and mp3 go through libsndfile (soundfile); webm/
matroska, mp4/m4a and ADTS aac go through PyAV (FFmpeg), which is also the fallback when
libsndfile rejects a container it should handle. PyAV is only ever given an explicit audio
demuxer, never FFmpeg's probing, so playlist or concat demuxers cannot be reached by an upload.

Integer PCM becomes float the way the reference loads files (int16 / 32768, int24 / 2**23,
int32 / 2**31, 8-bit unsigned (x - 128) / 128). Any number of channels is averaged to mono.
Other rates are resampled as ``resample`` (torchaudio's default sinc resampler) does on the
whole signal. Every failure caused by the bytes raises AudioError; decoding stops as soon as the
decoded duration passes the limit, so a small file that expands to hours is rejected after
decoding only the allowed part.

Memory is bounded by the 16 kHz result, not by the file's own rate and channels: each decoded
block is downmixed; up to EXACT_RESAMPLE_SAMPLES (87 s at 48 kHz, 95 s at 44.1 kHz) the signal
is resampled whole, exactly as the reference does, and a longer one is fed to a batched
``StreamResampler`` (equal to ``resample`` of the whole signal to float rounding) as it arrives,
so 600 s at 192 kHz costs the 38 MB of its 16 kHz samples plus a window of a few MB, never the
460 MB of the full-rate signal (docs/security.md, "Audio").
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile

from service.audio.pcm import pcm16_to_float
from service.audio.resample import StreamResampler, kernel_elements, resample
from service.errors import AudioError

TARGET_RATE = 16000
# Filter banks above this size mean exotic rates (e.g. 44101 Hz) that would take seconds per
# second of audio to convert; they are refused rather than tying up a worker.
MAX_RESAMPLE_KERNEL = 4_000_000
# Highest accepted input rate; decoding holds only a bounded window at this rate.
MAX_RATE = 192_000
# Headers can claim any channel count; each block allocates block * channels floats.
MAX_CHANNELS = 64
_SOUNDFILE_BLOCK = 65536
# Mono samples gathered from small decoded frames (PyAV) before they go to the resampler.
_RESAMPLE_BLOCK = 65536
# A signal of up to this many samples (16 MB of float32) is resampled whole, which gives the
# reference's samples exactly; a longer one is resampled block by block, so its memory stays
# bounded, equal to the whole-signal result to float rounding (about 1e-7; torch picks its conv
# kernel by input size, service/audio/resample.py).
EXACT_RESAMPLE_SAMPLES = 1 << 22


class AudioTooLong(AudioError):
    """Audio past ``AudioLimits.max_seconds`` (callers tell a per-input from a total limit)."""

    def __init__(self, seconds: float, limit: float, filename: str | None = None) -> None:
        self.seconds = seconds
        self.limit = limit
        where = f"{filename}: " if filename else ""
        super().__init__(f"{where}audio is too long: {seconds:.2f} s > limit {limit:g} s")


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on uploaded audio; min_samples is the tokenizer's 80 ms (less encodes to nothing)."""

    max_seconds: float = 600.0
    min_samples: int = 1280
    # 600 s of 48 kHz stereo 16-bit WAV is 115 MB; anything bigger is not a speech upload.
    max_bytes: int = 128 * 1024 * 1024


# Sniffed container -> FFmpeg demuxer name.
_DEMUXERS = {
    "wav": "wav",
    "w64": "w64",
    "aiff": "aiff",
    "flac": "flac",
    "ogg": "ogg",
    "mp3": "mp3",
    "aac": "aac",
    "mp4": "mov",
    "matroska": "matroska",
}
_SOUNDFILE_CONTAINERS = frozenset({"wav", "w64", "aiff", "flac", "ogg", "mp3"})
SUPPORTED_INPUTS = "wav, flac, ogg/vorbis, ogg/opus, webm/opus, mp3, m4a/aac, aac (adts), aiff"


def decode_audio(
    data: bytes, *, limits: AudioLimits | None = None, filename: str | None = None
) -> np.ndarray:
    """Decode an uploaded audio file to 1-D float32 mono 16 kHz samples."""
    return _decode_named(data, limits or AudioLimits(), filename)


def _decode_named(data: bytes, limits: AudioLimits, filename: str | None) -> np.ndarray:
    try:
        return _decode(bytes(data), limits)
    except AudioTooLong as error:
        if filename:
            raise AudioTooLong(error.seconds, error.limit, filename) from None
        raise
    except AudioError as error:
        if filename:
            raise AudioError(f"{filename}: {error}") from None
        raise


def load_audio_file(path: str | Path, *, limits: AudioLimits | None = None) -> np.ndarray:
    """Read and decode an audio file with the same rules as uploads."""
    limits = limits or AudioLimits()
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise AudioError(f"{path}: audio data exceeds {limits.max_bytes} bytes")
        data = path.read_bytes()
    except OSError as error:
        raise AudioError(f"{path}: cannot read audio file: {error.strerror or error}") from None
    return decode_audio(data, limits=limits, filename=str(path))


def decode_pcm16(data: bytes, sample_rate: int) -> np.ndarray:
    """Raw little-endian signed 16-bit mono PCM (realtime API) -> float32 at 16 kHz.

    Resampling is done per call: feed a whole utterance, not 20 ms network chunks, when the
    rate is not 16 kHz (chunk edges would otherwise differ from resampling the whole signal).
    """
    if len(data) % 2:
        raise AudioError(f"pcm16 audio has an odd number of bytes ({len(data)})")
    _check_rate(sample_rate)
    samples = pcm16_to_float(data)
    if sample_rate == TARGET_RATE:
        return samples
    return resample(samples, sample_rate, TARGET_RATE)


# Raw 16 kHz mono float32 samples, little-endian: what `decode_audio` returns, as bytes. The
# gateway decodes an upload once and sends this to the speech worker's /v1/encode, which encodes
# it without decoding again (docs/architecture.md, "Audio on the wire"). The rate parameter is
# required, so a body is never read at a rate it was not made for.
F32LE_MEDIA_TYPE = "audio/x-spiritlm-f32le"
F32LE_CONTENT_TYPE = f"{F32LE_MEDIA_TYPE}; rate={TARGET_RATE}"
F32LE_SAMPLE_BYTES = 4


@dataclass(frozen=True)
class DecodedAudio:
    """An input decoded once: its 16 kHz mono samples as little-endian float32.

    The one array is what goes on the wire, in slices (`f32le_chunks`), to the speech worker
    and to a retry on another one, without another copy: 64 KB per second of audio.
    """

    samples: np.ndarray

    @classmethod
    def from_samples(cls, samples: np.ndarray) -> DecodedAudio:
        array = np.ascontiguousarray(samples, dtype="<f4")
        array.flags.writeable = False
        return cls(array)

    @property
    def nbytes(self) -> int:
        return int(self.samples.nbytes)

    @property
    def seconds(self) -> float:
        return self.samples.size / TARGET_RATE

    def f32le_chunks(self, size: int = 1 << 16) -> Iterator[memoryview]:
        """The F32LE_MEDIA_TYPE body in slices of `size` bytes, views of the samples."""
        body = memoryview(self.samples).cast("B")
        for start in range(0, len(body), size):
            yield body[start : start + size]


def decode_to_f32le(
    data: bytes, *, limits: AudioLimits | None = None, filename: str | None = None
) -> DecodedAudio:
    """``decode_audio`` of an upload, held as what goes on the wire (no copy)."""
    return DecodedAudio.from_samples(decode_audio(data, limits=limits, filename=filename))


def check_f32le_size(size: int, limits: AudioLimits) -> None:
    """A raw float32 body of `size` bytes is whole samples within the duration limit.

    Needs only the length, so a declared Content-Length is refused before the body is read.
    """
    if size % F32LE_SAMPLE_BYTES:
        raise AudioError(
            f"{F32LE_MEDIA_TYPE}: {size} bytes is not a whole number of "
            f"{F32LE_SAMPLE_BYTES}-byte float32 samples"
        )
    _check_duration(size // F32LE_SAMPLE_BYTES, TARGET_RATE, limits)


def decode_f32le(data: bytes | bytearray, *, limits: AudioLimits | None = None) -> np.ndarray:
    """Raw little-endian float32 mono 16 kHz samples, with the checks of ``decode_audio``.

    The samples are a view of `data` (no copy; writable when `data` is a bytearray).
    """
    limits = limits or AudioLimits()
    check_f32le_size(len(data), limits)
    samples = np.frombuffer(data, dtype="<f4")
    _check_length(samples.size, limits)
    if not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")
    return samples.astype(np.float32, copy=False)


def sniff_container(data: bytes) -> str | None:
    """Name of the container the bytes start with, or None when it is not a supported one."""
    head = data[:12]
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"riff" and head[4:8] == b"\x2e\x91\xcf\x11":
        return "w64"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[4:8] == b"ftyp":
        return "mp4"
    return _sniff_mpeg_audio(data)


def _sniff_mpeg_audio(data: bytes) -> str | None:
    offset = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        # ID3v2 size is 4 bytes of 7 bits each; a footer adds another 10 bytes.
        size = 0
        for byte in data[6:10]:
            size = (size << 7) | (byte & 0x7F)
        offset = 10 + size + (10 if data[5] & 0x10 else 0)
    frame = data[offset : offset + 2]
    if len(frame) < 2 or frame[0] != 0xFF or frame[1] & 0xE0 != 0xE0:
        return None
    layer = (frame[1] >> 1) & 0x03
    # MPEG sync with layer bits 00 is an ADTS (AAC) header; 01..11 are layers III..I.
    return "aac" if layer == 0 else "mp3"


def _decode(data: bytes, limits: AudioLimits) -> np.ndarray:
    """The 16 kHz mono samples."""
    if not data:
        raise AudioError("audio is empty")
    if len(data) > limits.max_bytes:
        raise AudioError(f"audio data exceeds {limits.max_bytes} bytes")
    container = sniff_container(data)
    if container is None:
        raise AudioError(
            f"could not decode audio: unrecognised format (supported: {SUPPORTED_INPUTS})"
        )
    samples = _decode_container(data, container, _Sink(limits))
    _check_length(samples.size, limits)
    return samples


def _decode_container(data: bytes, container: str, sink: _Sink) -> np.ndarray:
    reasons: list[str] = []
    if container in _SOUNDFILE_CONTAINERS:
        try:
            return _decode_soundfile(data, sink)
        except AudioError:
            raise
        except Exception as error:  # libsndfile/cffi report bad bytes with assorted types
            reasons.append(f"libsndfile: {_describe(error)}")
    try:
        return _decode_pyav(data, _DEMUXERS[container], sink)
    except AudioError:
        raise
    except Exception as error:  # FFmpeg errors, and PyAV's own ValueError/TypeError on odd input
        reasons.append(f"ffmpeg: {_describe(error)}")
    raise AudioError(f"could not decode audio: {container}: {'; '.join(reasons)}")


def _describe(error: Exception) -> str:
    if isinstance(error, av.FFmpegError) and error.strerror:
        return str(error.strerror)
    text = str(error).strip() or type(error).__name__
    # libsndfile prefixes "Error opening <_io.BytesIO object at 0x...>:", meaningless to users.
    if text.startswith("Error opening <"):
        text = text.split(">:", 1)[-1].strip()
    return text


def _decode_soundfile(data: bytes, sink: _Sink) -> np.ndarray:
    with soundfile.SoundFile(io.BytesIO(data)) as source:
        rate = int(source.samplerate)
        _check_rate(rate)
        _check_channels(source.channels)
        return sink.collect(_soundfile_blocks(source), rate)


def _soundfile_blocks(source: soundfile.SoundFile) -> Iterator[np.ndarray]:
    # Fixed-size reads: a stream whose header has no length reports an absurd frame count,
    # so reading "everything" at once would try to allocate it.
    while True:
        block = source.read(_SOUNDFILE_BLOCK, dtype="float32", always_2d=True)
        if not len(block):
            return
        yield block.T


def _decode_pyav(data: bytes, demuxer: str, sink: _Sink) -> np.ndarray:
    with av.open(io.BytesIO(data), mode="r", format=demuxer) as source:
        if not source.streams.audio:
            raise AudioError("could not decode audio: the file has no audio stream")
        frames = source.decode(source.streams.audio[0])
        first = next(frames, None)
        if first is None:
            raise AudioError("audio is empty")
        # The decoder's output rate can differ from the container's (Opus is always 48 kHz).
        rate, channels = int(first.sample_rate), int(first.layout.nb_channels)
        _check_rate(rate)
        _check_channels(channels)
        return sink.collect(_pyav_blocks(first, frames, rate, channels), rate)


def _pyav_blocks(
    first: av.AudioFrame, rest: Iterator[av.AudioFrame], rate: int, channels: int
) -> Iterator[np.ndarray]:
    yield _frame_to_float(first)
    for frame in rest:
        if (int(frame.sample_rate), int(frame.layout.nb_channels)) != (rate, channels):
            raise AudioError("could not decode audio: sample rate or channels change mid-stream")
        yield _frame_to_float(frame)


# PyAV sample format (planar suffix removed) -> divisor that maps integers onto [-1, 1).
_INTEGER_SCALE = {"s16": 32768.0, "s32": 2.0**31, "s64": 2.0**63}


def _frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame as float32 (channels, samples)."""
    array = frame.to_ndarray()
    if not frame.format.is_planar:
        array = array.reshape(-1, frame.layout.nb_channels).T
    kind = frame.format.name.removesuffix("p")
    if kind in ("flt", "dbl"):
        return array.astype(np.float32, copy=False)
    if kind == "u8":
        return ((array.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if kind in _INTEGER_SCALE:
        return (array.astype(np.float64) / _INTEGER_SCALE[kind]).astype(np.float32)
    raise AudioError(f"could not decode audio: unsupported sample format {frame.format.name}")


@dataclass(frozen=True)
class _Sink:
    """Decoded blocks made 16 kHz mono as they arrive, within the limits."""

    limits: AudioLimits

    def collect(self, blocks: Iterator[np.ndarray], rate: int) -> np.ndarray:
        """16 kHz mono of (channels, n) blocks, downmixed and resampled as they arrive.

        Stops once the duration limit is passed. A signal of up to EXACT_RESAMPLE_SAMPLES is
        resampled whole, exactly as the reference does; a longer one streams through a batched
        `StreamResampler` (equal to float rounding), so only the 16 kHz output and one window are
        held.
        """
        resample_now = rate != TARGET_RATE
        resampler: StreamResampler | None = None
        parts: list[np.ndarray] = []
        waiting: list[np.ndarray] = []
        waiting_size = total = 0
        finite = True
        for block in blocks:
            total += block.shape[1]
            _check_duration(total, rate, self.limits)
            mono = _downmix(block)
            finite = finite and bool(np.isfinite(mono).all())
            if not resample_now:
                parts.append(mono)
                continue
            waiting.append(mono)
            waiting_size += mono.size
            if resampler is None and waiting_size > EXACT_RESAMPLE_SAMPLES:
                resampler = StreamResampler(rate, TARGET_RATE, batched=True)
            if resampler is not None and waiting_size >= _RESAMPLE_BLOCK:
                parts.append(resampler.write(np.concatenate(waiting)))
                waiting, waiting_size = [], 0
        if total == 0:
            raise AudioError("audio is empty")
        if not finite:
            raise AudioError("audio contains NaN or infinite samples")
        length = -(-total * TARGET_RATE // rate)
        if resampler is not None:
            if waiting:
                parts.append(resampler.write(np.concatenate(waiting)))
            parts.append(resampler.close())
        elif resample_now:
            parts = [resample(np.concatenate(waiting), rate, TARGET_RATE)]
        samples = np.concatenate(parts)
        assert samples.size == length
        return samples


def _downmix(channels: np.ndarray) -> np.ndarray:
    """Average all channels (stereo and beyond) to mono."""
    if channels.shape[0] == 1:
        return np.array(channels[0], dtype=np.float32)
    # Mean in float64 then one rounding: for stereo this equals the float32 (a + b) / 2.
    return channels.mean(axis=0, dtype=np.float64).astype(np.float32)


def _check_rate(rate: int) -> None:
    if not 0 < rate <= MAX_RATE:
        raise AudioError(f"could not decode audio: unsupported sample rate {rate} Hz")
    if kernel_elements(rate, TARGET_RATE) > MAX_RESAMPLE_KERNEL:
        raise AudioError(
            f"could not decode audio: unsupported sample rate {rate} Hz "
            f"(use a common rate such as 16000, 22050, 44100 or 48000 Hz)"
        )


def _check_channels(channels: int) -> None:
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"could not decode audio: unsupported channel count {channels}")


def _check_duration(samples: int, rate: int, limits: AudioLimits) -> None:
    if samples > limits.max_seconds * rate:
        raise AudioTooLong(samples / rate, limits.max_seconds)


def _check_length(length: int, limits: AudioLimits) -> None:
    if length == 0:
        raise AudioError("audio is empty")
    if length < limits.min_samples:
        got_ms = 1000.0 * length / TARGET_RATE
        min_ms = 1000.0 * limits.min_samples / TARGET_RATE
        raise AudioError(f"audio is too short: {got_ms:g} ms < {min_ms:g} ms")
    _check_duration(length, TARGET_RATE, limits)
