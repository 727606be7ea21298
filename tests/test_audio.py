"""Audio I/O: decoding uploads, torchaudio-equivalent resampling, one-shot and stream encoding."""

from __future__ import annotations

import io
import math
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.audio.decode import (
    AudioLimits,
    AudioTooLong,
    decode_audio,
    decode_pcm16,
    load_audio_file,
    sniff_container,
)
from service.audio.encode import (
    MEDIA_TYPES,
    SAMPLE_RATES,
    SUPPORTED_FORMATS,
    StreamEncoder,
    available_formats,
    check_sample_rate,
    encode_audio,
)
from service.audio.resample import StreamResampler, resample, resample_tensor
from service.errors import AudioError

SPEECH_PATH = Path("/work/shared/data/7143-88743-0029.flac")
RATE = 16000


# ---------------------------------------------------------------- signals and file makers


def _tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    times = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * freq * times)).astype(np.float32)


def _chirp(rate: int, seconds: float) -> np.ndarray:
    """Non-periodic test signal, so cross-correlation has a single clear peak."""
    times = np.arange(int(round(rate * seconds))) / rate
    freq = 200.0 + 1500.0 * times / seconds
    envelope = 0.2 + 0.3 * np.abs(np.sin(2 * np.pi * 1.3 * times))
    return (envelope * np.sin(2 * np.pi * np.cumsum(freq) / rate)).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    if not SPEECH_PATH.exists():
        pytest.skip(f"{SPEECH_PATH} is not available")
    samples, rate = soundfile.read(SPEECH_PATH, dtype="float32")
    assert rate == RATE
    return samples[: 3 * RATE]  # 3 s keeps the lossy round trips fast


def _soundfile_bytes(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _pyav_bytes(samples: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Encode (n,) or (n, channels) float samples with FFmpeg."""
    planes = samples[None, :] if samples.ndim == 1 else np.ascontiguousarray(samples.T)
    layout = "mono" if planes.shape[0] == 1 else "stereo"
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(planes.astype(np.float32), format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.time_base = Fraction(1, rate)
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()


def _xcorr_shift(a: np.ndarray, b: np.ndarray) -> int:
    """Offset d maximising sum a[d + i] * b[i] (FFT cross-correlation)."""
    n = 1 << int(np.ceil(np.log2(a.size + b.size)))
    spectrum = np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n))
    corr = np.fft.irfft(spectrum, n)
    lag = int(np.argmax(corr))
    return lag if lag < n // 2 else lag - n


def _aligned_corr(decoded: np.ndarray, source: np.ndarray) -> float:
    shift = _xcorr_shift(decoded, source)
    if shift >= 0:
        a, b = decoded[shift:], source
    else:
        a, b = decoded, source[-shift:]
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# ---------------------------------------------------------------- resampling

RATE_PAIRS = [(8000, 16000), (22050, 16000), (24000, 16000), (44100, 16000), (48000, 16000),
              (16000, 24000), (16000, 8000)]  # fmt: skip


def _direct_resample(signal: np.ndarray, orig: int, new: int) -> np.ndarray:
    """The windowed-sinc interpolation formula evaluated sample by sample in float64.

    y[j] = sum_i x[i] * s * sinc(s * (i/orig - j/new)) * hann, s = 0.99 * min(orig, new),
    window half-width 6 zero crossings. Independent of the conv1d/phase construction.
    """
    base = 0.99 * min(orig, new)
    n_out = math.ceil(signal.size * new / orig)
    i = np.arange(signal.size)
    out = np.empty(n_out)
    for j in range(n_out):
        t = np.clip((i / orig - j / new) * base, -6, 6)
        window = np.cos(t * np.pi / 12) ** 2
        out[j] = np.sum(signal * np.sinc(t) * window) * base / orig
    return out


@pytest.mark.parametrize("orig,new", RATE_PAIRS)
@pytest.mark.parametrize("length", [0, 1, 7, 441, 2000])
def test_resample_length_is_ceil_of_ratio(orig: int, new: int, length: int) -> None:
    signal = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    out = resample(signal, orig, new)
    assert out.dtype == np.float32
    assert out.shape == (math.ceil(length * new / orig),)


@pytest.mark.parametrize(
    "orig,new", [(44100, 16000), (24000, 16000), (16000, 24000), (8000, 16000)]
)
def test_resample_matches_direct_sinc_formula(orig: int, new: int) -> None:
    signal = (0.5 * np.random.default_rng(3).standard_normal(300)).astype(np.float32)
    expected = _direct_resample(signal.astype(np.float64), orig, new)
    # float32 kernel arguments (as in the reference) cost a few 1e-6 against exact float64
    np.testing.assert_allclose(resample(signal, orig, new), expected, atol=1e-5)


def test_resample_equal_rates_is_identity() -> None:
    signal = np.random.default_rng(0).standard_normal(1000)
    out = resample(signal, 16000, 16000)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, signal.astype(np.float32))


@pytest.mark.parametrize(
    "orig,new", [(44100, 16000), (8000, 16000), (48000, 16000), (16000, 24000)]
)
def test_resample_keeps_low_sine_frequency_and_amplitude(orig: int, new: int) -> None:
    signal = _tone(orig, 1.0, freq=440.0, amp=0.5)
    out = resample(signal, orig, new).astype(np.float64)
    middle = out[new // 4 : 3 * new // 4]  # away from the zero-padded edges
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(middle.size), 1 << 18))
    peak_hz = np.argmax(spectrum) * new / (1 << 18)
    assert abs(peak_hz - 440.0) < 1.0
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


@pytest.mark.parametrize("orig,new", RATE_PAIRS)
def test_resample_keeps_dc(orig: int, new: int) -> None:
    out = resample(np.full(orig, 0.3, dtype=np.float32), orig, new)
    middle = out[new // 4 : 3 * new // 4]
    np.testing.assert_allclose(middle, 0.3, rtol=2e-3)


def test_resample_tensor_keeps_batch_shape_and_device() -> None:
    batch = torch.randn(2, 3, 1000)
    out = resample_tensor(batch, 44100, 16000)
    assert out.shape == (2, 3, math.ceil(1000 * 16000 / 44100))
    assert out.device == batch.device
    expected = resample(batch[1, 2].numpy(), 44100, 16000)
    np.testing.assert_allclose(out[1, 2].numpy(), expected, atol=1e-6)


def test_resample_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        resample(np.zeros(10), 0, 16000)
    with pytest.raises(ValueError, match="positive integer"):
        resample(np.zeros(10), 16000, 22050.5)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    pair=st.sampled_from(RATE_PAIRS),
    cuts=st.lists(st.integers(min_value=0, max_value=900), max_size=8),
)
def test_stream_resampler_matches_one_shot(pair: tuple[int, int], cuts: list[int]) -> None:
    orig, new = pair
    signal = np.random.default_rng(len(cuts)).standard_normal(2500).astype(np.float32)
    streamer = StreamResampler(orig, new)
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(streamer.write(signal[start : start + cut]))
        start += cut
    pieces.append(streamer.write(signal[start:]))
    pieces.append(streamer.close())
    np.testing.assert_allclose(np.concatenate(pieces), resample(signal, orig, new), atol=1e-6)


# Rates of uploads (the high ones included: decoding holds them only as a bounded window).
UPLOAD_RATES = [8000, 11025, 22050, 32000, 44100, 48000, 88200, 96000, 176400, 192000]


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from(UPLOAD_RATES),
    length=st.integers(min_value=0, max_value=1_500_000),
    pieces=st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=6),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_batched_stream_resampler_equals_the_whole_signal(
    rate: int, length: int, pieces: list[int], seed: int
) -> None:
    """Batched streaming gives the samples of `resample` on the whole signal, to float rounding
    (torch's conv kernels differ by input size, service/audio/resample.py)."""
    signal = (0.3 * np.random.default_rng(seed).standard_normal(length)).astype(np.float32)
    streamer = StreamResampler(rate, RATE, batched=True)
    out, start, turn = [], 0, 0
    while start < length:
        size = pieces[turn % len(pieces)]
        out.append(streamer.write(signal[start : start + size]))
        start, turn = start + size, turn + 1
    out.append(streamer.close())
    expected = resample(signal, rate, RATE)
    streamed = np.concatenate(out)
    assert streamed.shape == expected.shape
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-6)


def _full_rate_decode_then_resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """What decoding did before it streamed: downmix the whole signal, then `resample` it."""
    mono = samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float64)
    mono = mono.astype(np.float32)
    return mono if rate == RATE else resample(mono, rate, RATE)


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 192000, 16000])
@pytest.mark.parametrize("channels", [1, 2])
def test_decode_equals_whole_signal_resample(rate: int, channels: int) -> None:
    """Block-by-block downmix + resampling changes no sample (random audio, several batches)."""
    rng = np.random.default_rng(rate + channels)
    samples = (0.4 * rng.standard_normal((rate * 9 + 1234, channels))).astype(np.float32)
    samples = samples[:, 0] if channels == 1 else samples
    for subtype in ("FLOAT", "PCM_16"):
        data = _soundfile_bytes(samples, rate, "WAV", subtype)
        reread, _ = soundfile.read(io.BytesIO(data), dtype="float32")
        decoded = decode_audio(data)
        np.testing.assert_array_equal(decoded, _full_rate_decode_then_resample(reread, rate))


def test_long_signals_are_resampled_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past EXACT_RESAMPLE_SAMPLES decoding streams (bounded memory), equal to float rounding."""
    import service.audio.decode as decoding

    monkeypatch.setattr(decoding, "EXACT_RESAMPLE_SAMPLES", 100_000)
    rate = 44100
    noise = np.random.default_rng(7).standard_normal((rate * 9 + 77, 2))
    samples = (0.4 * noise).astype(np.float32)
    data = _soundfile_bytes(samples, rate, "WAV", "FLOAT")
    reread, _ = soundfile.read(io.BytesIO(data), dtype="float32")
    decoded = decode_audio(data)
    whole = _full_rate_decode_then_resample(reread, rate)
    assert decoded.shape == whole.shape
    np.testing.assert_allclose(decoded, whole, rtol=0, atol=1e-6)


def test_decode_equals_whole_signal_resample_through_pyav() -> None:
    """PyAV's small frames are gathered before resampling; the samples are still identical."""
    rate = 48000
    tone = np.stack([_chirp(rate, 7.0), _tone(rate, 7.0, freq=300.0)], axis=1)
    data = _pyav_bytes(tone, rate, "matroska", "flac")
    frames = []
    with av.open(io.BytesIO(data), format="matroska") as source:
        for frame in source.decode(audio=0):
            assert frame.format.name in ("s16", "s16p")
            array = frame.to_ndarray()
            frames.append(array if frame.format.is_planar else array.reshape(-1, 2).T)
    reread = (np.concatenate(frames, axis=1).T / 32768.0).astype(np.float32)
    decoded = decode_audio(data)
    np.testing.assert_array_equal(decoded, _full_rate_decode_then_resample(reread, rate))


def test_decoding_refusals_name_the_problem() -> None:
    too_long = _soundfile_bytes(_tone(RATE, 1.5), RATE, "WAV", "PCM_16")
    with pytest.raises(AudioTooLong) as caught:
        decode_audio(too_long, limits=AudioLimits(max_seconds=1.0), filename="a.wav")
    assert caught.value.limit == 1.0 and str(caught.value).startswith("a.wav: audio is too long")
    nan = _tone(RATE, 0.5)
    nan[10] = np.nan
    stereo_nan = _soundfile_bytes(np.stack([_tone(RATE, 0.5), nan], 1), RATE, "WAV", "FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        decode_audio(stereo_nan)


_PEAK_RSS_SCRIPT = """
import resource, sys
from service.audio.decode import AudioLimits, decode_audio
data = open(sys.argv[1], "rb").read()
decode = {"decode": decode_audio}[sys.argv[2]]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = decode(data, limits=AudioLimits(max_seconds=600))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024)
"""


@pytest.mark.parametrize("how,limit_mb", [("decode", 150)])
def test_high_rate_audio_is_decoded_in_bounded_memory(
    tmp_path: Path, how: str, limit_mb: int
) -> None:
    """599 s of 192 kHz silence (360 KB of FLAC): the full-rate signal alone is 460 MB, and
    decoding it whole once peaked at +2 GB. Now only the 16 kHz result (38 MB) is held."""
    import subprocess
    import sys

    path = tmp_path / "silence.flac"
    rate = 192_000
    with soundfile.SoundFile(path, "w", rate, 1, format="FLAC", subtype="PCM_16") as out:
        for _ in range(599 // 10):
            out.write(np.zeros(rate * 10, dtype=np.int16))
        out.write(np.zeros(rate * 9, dtype=np.int16))
    assert path.stat().st_size < 1024 * 1024
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, str(path), how],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    growth_mb = int(done.stdout.split()[-1])
    assert growth_mb < limit_mb, done.stdout


# ---------------------------------------------------------------- decoding: lossless formats


def _int16_signal(n: int, channels: int = 1) -> np.ndarray:
    """Integer samples spanning the full int16 range, incl. both extremes."""
    rng = np.random.default_rng(n + channels)
    data = rng.integers(-32768, 32768, size=(n, channels), dtype=np.int32)
    data[0] = -32768
    data[1] = 32767
    return data.astype(np.int16)


def test_decode_wav_int16_is_exact() -> None:
    data = _int16_signal(4000)
    decoded = decode_audio(_soundfile_bytes(data, RATE, "WAV", "PCM_16"))
    np.testing.assert_array_equal(decoded, data[:, 0].astype(np.float32) / 32768.0)


def test_decode_wav_8bit_is_exact() -> None:
    # 8-bit values stored through int16 samples that are multiples of 256.
    data = (_int16_signal(4000) // 256 * 256).astype(np.int16)
    decoded = decode_audio(_soundfile_bytes(data, RATE, "WAV", "PCM_U8"))
    np.testing.assert_array_equal(decoded, data[:, 0].astype(np.float32) / 32768.0)


def test_decode_wav_int24_and_int32() -> None:
    wide = _int16_signal(4000).astype(np.int32) * 65536 + 12345 * 256
    expected = (wide[:, 0] / 2.0**31).astype(np.float32)
    for subtype in ("PCM_24", "PCM_32"):
        decoded = decode_audio(_soundfile_bytes(wide, RATE, "WAV", subtype))
        np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-7, err_msg=subtype)


def test_decode_wav_float32_is_exact() -> None:
    data = _chirp(RATE, 0.5)
    decoded = decode_audio(_soundfile_bytes(data, RATE, "WAV", "FLOAT"))
    np.testing.assert_array_equal(decoded, data)


def test_decode_flac_speech_is_exact(speech: np.ndarray) -> None:
    decoded = decode_audio(_soundfile_bytes(speech, RATE, "FLAC", "PCM_16"))
    np.testing.assert_array_equal(decoded, speech)


def test_load_audio_file_reads_the_reference_speech() -> None:
    if not SPEECH_PATH.exists():
        pytest.skip(f"{SPEECH_PATH} is not available")
    decoded = load_audio_file(SPEECH_PATH)
    assert decoded.shape == (146160,)
    assert decoded.dtype == np.float32
    raw, _ = soundfile.read(SPEECH_PATH, dtype="int16")
    np.testing.assert_array_equal(decoded, raw.astype(np.float32) / 32768.0)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_decode_resamples_to_16k(rate: int) -> None:
    data = _int16_signal(rate // 2)
    decoded = decode_audio(_soundfile_bytes(data, rate, "WAV", "PCM_16"))
    source = data[:, 0].astype(np.float32) / 32768.0
    assert decoded.shape == (math.ceil(source.size * RATE / rate),)
    np.testing.assert_array_equal(decoded, resample(source, rate, RATE))


def test_decode_averages_stereo() -> None:
    data = _int16_signal(4000, channels=2)
    decoded = decode_audio(_soundfile_bytes(data, RATE, "WAV", "PCM_16"))
    left, right = (data[:, c].astype(np.float32) / 32768.0 for c in (0, 1))
    np.testing.assert_array_equal(decoded, (left + right) / np.float32(2))


def test_decode_averages_more_channels() -> None:
    data = _int16_signal(4000, channels=4)
    decoded = decode_audio(_soundfile_bytes(data, RATE, "WAV", "PCM_16"))
    expected = (data.astype(np.float64) / 32768.0).mean(axis=1)
    np.testing.assert_allclose(decoded, expected, atol=1e-7)


def test_decode_streaming_wav_with_unknown_sizes() -> None:
    data = _int16_signal(3000)[:, 0]
    header = bytearray(_soundfile_bytes(data, RATE, "WAV", "PCM_16")[:44])
    header[4:8] = header[40:44] = struct.pack("<I", 0xFFFFFFFF)
    decoded = decode_audio(bytes(header) + data.astype("<i2").tobytes())
    np.testing.assert_array_equal(decoded, data.astype(np.float32) / 32768.0)


# ---------------------------------------------------------------- decoding: lossy formats

LOSSY_INPUTS = {
    # name: (maker, native rate, expected container)
    "ogg-vorbis": (lambda x, r: _soundfile_bytes(x, r, "OGG", "VORBIS"), 16000, "ogg"),
    "ogg-opus-libsndfile": (lambda x, r: _soundfile_bytes(x, r, "OGG", "OPUS"), 48000, "ogg"),
    "ogg-opus-ffmpeg": (lambda x, r: _pyav_bytes(x, r, "ogg", "libopus"), 48000, "ogg"),
    "webm-opus": (lambda x, r: _pyav_bytes(x, r, "webm", "libopus"), 48000, "matroska"),
    "mp3": (lambda x, r: _soundfile_bytes(x, r, "MP3", "MPEG_LAYER_III"), 16000, "mp3"),
    "mp3-lame-24k": (lambda x, r: _pyav_bytes(x, r, "mp3", "libmp3lame"), 24000, "mp3"),
    "m4a-aac": (lambda x, r: _pyav_bytes(x, r, "ipod", "aac"), 44100, "mp4"),
    "adts-aac": (lambda x, r: _pyav_bytes(x, r, "adts", "aac"), 16000, "aac"),
}


@pytest.mark.parametrize("name", sorted(LOSSY_INPUTS))
def test_decode_lossy_speech(name: str, speech: np.ndarray) -> None:
    maker, rate, container = LOSSY_INPUTS[name]
    source = speech if rate == RATE else resample(speech, RATE, rate)
    data = maker(source, rate)
    assert sniff_container(data) == container
    decoded = decode_audio(data, filename=f"upload.{name}")
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    # Codec priming/padding adds at most a few frames.
    assert speech.size - 64 <= decoded.size <= speech.size + 3000
    assert _aligned_corr(decoded, speech) > 0.9


@pytest.mark.parametrize("name", sorted(LOSSY_INPUTS))
def test_decode_lossy_stereo_tone(name: str) -> None:
    maker, rate, _ = LOSSY_INPUTS[name]
    tone = _tone(rate, 1.0, freq=330.0, amp=0.4)
    stereo = np.stack([tone, 0.5 * tone], axis=1)
    decoded = decode_audio(maker(stereo, rate))
    expected = _tone(RATE, 1.0, freq=330.0, amp=0.3)  # mean of the two channels
    middle = decoded[4000:12000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)
    assert _aligned_corr(decoded, expected) > 0.9


# ---------------------------------------------------------------- decoding: errors


def _wav(samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> bytes:
    return _soundfile_bytes(samples, rate, "WAV", subtype)


def test_error_empty() -> None:
    with pytest.raises(AudioError, match="^audio is empty$"):
        decode_audio(b"")
    with pytest.raises(AudioError, match="^audio is empty$"):
        decode_audio(_wav(np.zeros(0, dtype=np.float32)))


def test_error_undecodable() -> None:
    with pytest.raises(AudioError, match="^could not decode audio: unrecognised format"):
        decode_audio(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="^could not decode audio: flac: "):
        decode_audio(b"fLaC" + bytes(200))


def test_error_too_short() -> None:
    with pytest.raises(AudioError, match=r"^audio is too short: 62\.5 ms < 80 ms$"):
        decode_audio(_wav(_tone(RATE, 1000 / RATE)))
    # 80 ms exactly is accepted
    assert decode_audio(_wav(_tone(RATE, 0.08))).size == 1280
    # the limit applies after resampling: 3527 samples at 44.1 kHz -> 1280 samples
    assert decode_audio(_wav(_tone(44100, 3527 / 44100), rate=44100)).size == 1280


def test_error_too_long() -> None:
    limits = AudioLimits(max_seconds=1.0)
    with pytest.raises(AudioError, match=r"^audio is too long: 1\.\d+ s > limit 1 s$"):
        decode_audio(_wav(_tone(RATE, 1.5)), limits=limits)
    assert decode_audio(_wav(_tone(RATE, 1.0)), limits=limits).size == RATE


@pytest.mark.parametrize("fmt,subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_decompression_bomb_stops_at_the_limit(fmt: str, subtype: str) -> None:
    silence = np.zeros(8000 * 120, dtype=np.int16)  # 120 s that compress to a few KiB
    data = _soundfile_bytes(silence, 8000, fmt, subtype)
    assert len(data) < 200_000
    with pytest.raises(AudioError, match="audio is too long") as caught:
        decode_audio(data, limits=AudioLimits(max_seconds=5.0))
    # decoding stopped shortly after the limit instead of decoding all 120 s
    seconds = float(str(caught.value).split(": ")[1].split(" s")[0])
    assert 5.0 < seconds < 15.0


def test_decompression_bomb_stops_at_the_limit_pyav() -> None:
    data = _pyav_bytes(np.zeros(16000 * 60, dtype=np.float32), 16000, "adts", "aac")
    with pytest.raises(AudioError, match="audio is too long") as caught:
        decode_audio(data, limits=AudioLimits(max_seconds=2.0))
    seconds = float(str(caught.value).split(": ")[1].split(" s")[0])
    assert 2.0 < seconds < 3.0


def test_error_non_finite() -> None:
    samples = _tone(RATE, 0.5)
    samples[100] = np.nan
    with pytest.raises(AudioError, match="^audio contains NaN or infinite samples$"):
        decode_audio(_wav(samples, subtype="FLOAT"))
    samples[100] = np.inf
    with pytest.raises(AudioError, match="^audio contains NaN or infinite samples$"):
        decode_audio(_wav(samples, subtype="FLOAT"))


def test_error_too_many_bytes(tmp_path: Path) -> None:
    data = _wav(_tone(RATE, 0.5))
    with pytest.raises(AudioError, match=f"^audio data exceeds {len(data) - 1} bytes$"):
        decode_audio(data, limits=AudioLimits(max_bytes=len(data) - 1))
    path = tmp_path / "big.wav"
    path.write_bytes(data)
    with pytest.raises(AudioError, match=f"big.wav: audio data exceeds {len(data) - 1} bytes"):
        load_audio_file(path, limits=AudioLimits(max_bytes=len(data) - 1))


def test_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="^voice.ogg: audio is empty$"):
        decode_audio(b"", filename="voice.ogg")
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="missing.wav: cannot read audio file"):
        load_audio_file(missing)


def test_sniffing_ignores_the_filename() -> None:
    data = _soundfile_bytes(_tone(RATE, 0.2), RATE, "FLAC", "PCM_16")
    assert decode_audio(data, filename="clip.mp3").size == 3200


def test_unsupported_sample_rate_is_refused() -> None:
    data = _wav(_tone(44101, 0.2), rate=44101)
    with pytest.raises(AudioError, match="unsupported sample rate 44101 Hz"):
        decode_audio(data)


# ---------------------------------------------------------------- decoding: fuzz

_FUZZ_SEEDS: dict[str, bytes] = {}


def _fuzz_seeds() -> dict[str, bytes]:
    if not _FUZZ_SEEDS:
        tone = _tone(RATE, 0.3)
        _FUZZ_SEEDS.update(
            {
                "wav": _wav(tone),
                "wav-float": _wav(tone, subtype="FLOAT"),
                "flac": _soundfile_bytes(tone, RATE, "FLAC", "PCM_16"),
                "vorbis": _soundfile_bytes(tone, RATE, "OGG", "VORBIS"),
                "opus": _pyav_bytes(tone, RATE, "ogg", "libopus"),
                "webm": _pyav_bytes(tone, 48000, "webm", "libopus"),
                "mp3": _pyav_bytes(tone, RATE, "mp3", "libmp3lame"),
                "m4a": _pyav_bytes(tone, RATE, "ipod", "aac"),
                "adts": _pyav_bytes(tone, RATE, "adts", "aac"),
            }
        )
    return _FUZZ_SEEDS


def _decode_or_audio_error(data: bytes) -> None:
    try:
        out = decode_audio(data, limits=AudioLimits(max_seconds=5.0))
    except AudioError:
        return
    assert out.dtype == np.float32 and out.ndim == 1 and np.isfinite(out).all()


MAGICS = [b"", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3\x03\x00\x00",
          b"\xff\xfb", b"\xff\xf1", b"\x1a\x45\xdf\xa3", b"\x00\x00\x00\x18ftypM4A "]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from(MAGICS), body=st.binary(max_size=600))
def test_fuzz_random_bytes_only_raise_audio_error(magic: bytes, body: bytes) -> None:
    _decode_or_audio_error(magic + body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(_fuzz_seeds())), cut=st.floats(0.0, 1.0), data=st.data())
def test_fuzz_damaged_files_only_raise_audio_error(name: str, cut: float, data) -> None:
    valid = _fuzz_seeds()[name]
    damaged = bytearray(valid[: int(cut * len(valid))])
    flips = data.draw(st.lists(st.integers(0, max(0, len(damaged) - 1)), max_size=4))
    for position in flips:
        if damaged:
            damaged[position] ^= 0xA5
    _decode_or_audio_error(bytes(damaged))


# ---------------------------------------------------------------- raw pcm16 input


def test_decode_pcm16_round_trip_and_rate() -> None:
    data = _int16_signal(2400)[:, 0]
    raw = data.astype("<i2").tobytes()
    np.testing.assert_array_equal(decode_pcm16(raw, RATE), data.astype(np.float32) / 32768.0)
    at_24k = decode_pcm16(raw, 24000)
    np.testing.assert_array_equal(at_24k, resample(data.astype(np.float32) / 32768.0, 24000, RATE))
    assert at_24k.size == 1600


def test_decode_pcm16_odd_length() -> None:
    with pytest.raises(AudioError, match="odd number of bytes"):
        decode_pcm16(b"\x00\x01\x02", RATE)


# ---------------------------------------------------------------- encoding


def test_media_types_cover_every_format() -> None:
    assert set(MEDIA_TYPES) == set(SUPPORTED_FORMATS)
    assert all(value.startswith("audio/") for value in MEDIA_TYPES.values())


def test_all_encoders_are_available_here() -> None:
    assert available_formats() == SUPPORTED_FORMATS


def test_unknown_format_lists_supported() -> None:
    with pytest.raises(ValueError, match="supported: wav, pcm, flac, mp3, opus, aac"):
        encode_audio(np.zeros(10), RATE, "ogg-vorbis")
    with pytest.raises(ValueError, match="supported: wav, pcm, flac, mp3, opus, aac"):
        StreamEncoder("m4a", RATE)


def test_encode_wav_header_and_exact_samples() -> None:
    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, 1 / 32768], dtype=np.float32)
    data = encode_audio(samples, RATE, "wav")
    decoded, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == RATE and soundfile.info(io.BytesIO(data)).subtype == "PCM_16"
    # clipped to [-1, 1], then round(x * 32768) with +1.0 capped at 32767
    np.testing.assert_array_equal(decoded, [0, 16384, -16384, 32767, -32768, 32767, -32768, 1])


def test_encode_pcm_is_raw_s16le() -> None:
    samples = _chirp(RATE, 0.25)
    raw = encode_audio(samples, RATE, "pcm")
    assert len(raw) == 2 * samples.size
    expected = np.clip(np.rint(samples * 32768), -32768, 32767).astype("<i2").tobytes()
    assert raw == expected


def test_encode_round_trip_through_decoder_lossless(speech: np.ndarray) -> None:
    for fmt in ("wav", "flac"):
        np.testing.assert_array_equal(decode_audio(encode_audio(speech, RATE, fmt)), speech)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_encode_round_trip_lossy(fmt: str, speech: np.ndarray) -> None:
    decoded = decode_audio(encode_audio(speech, RATE, fmt))
    assert abs(decoded.size - speech.size) <= 2048
    assert _aligned_corr(decoded, speech) > 0.9


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "aac"])
def test_encode_output_rate(fmt: str) -> None:
    samples = _chirp(RATE, 1.0)
    data = encode_audio(samples, RATE, fmt, output_rate=24000)
    with av.open(io.BytesIO(data)) as container:
        stream_rate = container.streams.audio[0].codec_context.sample_rate
    expected_rate = 48000 if fmt == "opus" else 24000  # Opus always decodes at 48 kHz
    assert stream_rate == expected_rate
    if fmt in ("wav", "flac"):
        decoded, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        assert rate == 24000
        expected = np.clip(np.rint(resample(samples, RATE, 24000) * 32768), -32768, 32767)
        np.testing.assert_array_equal(decoded, expected / 32768)


def test_encode_rejects_rate_the_codec_cannot_take() -> None:
    with pytest.raises(ValueError, match="opus cannot be encoded at 22050 Hz"):
        encode_audio(np.zeros(100), RATE, "opus", output_rate=22050)


def test_output_rates_outside_the_offered_ones_are_refused() -> None:
    for rate in SAMPLE_RATES:
        check_sample_rate(rate)
    with pytest.raises(ValueError, match=r"^sample_rate 11025 is not supported; use one of 8000,"):
        check_sample_rate(11025)
    with pytest.raises(ValueError, match=r"^session\.rate 44 is"):
        check_sample_rate(44, "session.rate")


def test_encode_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError, match="1-D"):
        encode_audio(np.zeros((2, 100)), RATE, "wav")
    with pytest.raises(ValueError, match="NaN"):
        encode_audio(np.array([0.0, np.nan]), RATE, "wav")


def _stream(fmt: str, samples: np.ndarray, rate: int, **kwargs: int) -> tuple[bytes, int]:
    """Encode in uneven chunks; returns the bytes and how many writes produced output."""
    encoder = StreamEncoder(fmt, rate, **kwargs)
    rng = np.random.default_rng(7)
    out, productive, start = [], 0, 0
    while start < samples.size:
        size = int(rng.integers(1, 2400))
        piece = encoder.write(samples[start : start + size])
        productive += bool(piece)
        out.append(piece)
        start += size
    out.append(encoder.close())
    return b"".join(out), productive


def test_stream_wav_header_has_unknown_sizes() -> None:
    samples = _chirp(RATE, 0.5)
    encoder = StreamEncoder("wav", RATE)
    first = encoder.write(samples[:100])
    assert first[:4] == b"RIFF" and first[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", first[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", first[40:44])[0] == 0xFFFFFFFF
    assert len(first) == 44 + 200
    assert encoder.media_type == "audio/wav"


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_stream_matches_one_shot(fmt: str, speech: np.ndarray) -> None:
    streamed, productive = _stream(fmt, speech, RATE)
    one_shot = encode_audio(speech, RATE, fmt)
    # bytes come out while audio is written, not only at close
    assert productive > 5
    if fmt == "pcm":
        assert streamed == one_shot
        return
    a, b = decode_audio(one_shot), decode_audio(streamed)
    if fmt in ("wav", "flac"):
        np.testing.assert_array_equal(a, b)
        return
    # The same encoder sees the same frames; only container metadata differs. The streamed
    # mp3 lacks the Xing/LAME tag, so its decoder does not trim the encoder delay.
    shift = _xcorr_shift(b, a)
    assert 0 <= shift <= 1200
    n = min(a.size, b.size - shift)
    assert n >= a.size - 1200
    np.testing.assert_allclose(b[shift : shift + n], a[:n], atol=1e-4)


@pytest.mark.parametrize("fmt", ["pcm", "wav", "flac", "opus"])
def test_stream_resamples_continuously(fmt: str) -> None:
    samples = _chirp(RATE, 1.0)
    streamed, _ = _stream(fmt, samples, 24000, input_rate=RATE)
    one_shot = encode_audio(samples, RATE, fmt, output_rate=24000)
    if fmt == "pcm":
        diff = np.abs(np.frombuffer(streamed, "<i2").astype(int) - np.frombuffer(one_shot, "<i2"))
        assert diff.max() <= 1  # float32 summation order may move one rounding
        return
    np.testing.assert_allclose(decode_audio(streamed), decode_audio(one_shot), atol=1e-4)


def test_stream_empty_and_closed() -> None:
    encoder = StreamEncoder("wav", RATE)
    header = encoder.close()
    assert len(header) == 44 and header[40:44] == b"\xff\xff\xff\xff"
    with pytest.raises(ValueError, match="closed"):
        encoder.write(np.zeros(10))
    with pytest.raises(ValueError, match="closed"):
        encoder.close()
