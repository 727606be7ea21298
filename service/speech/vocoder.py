"""Unit vocoder: load an official HiFi-GAN directory and turn unit codes into 16 kHz audio.

Implements docs/format.md#unit-vocoder: strict loading of config.json / generator.pt /
speakers.txt / styles.txt, weight-norm folding, and the input preparation of the reference
wrapper (de-duplication rule, negative-code filtering, duration prediction or code up-sampling).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from service.errors import CheckpointError, UnitFormatError
from service.speech.hifigan import CodeHiFiGAN, DurationParams, HiFiGANConfig
from service.speech.incremental import STEP_FRAMES, IncrementalDecoder
from service.speech.incremental import warm_up as warm_up_steps
from service.speech.precision import DTYPES, Precision, channels_last_pays
from service.speech.torch_files import fold_weight_norm
from service.speech.yielding import add_yield_points

SAMPLE_RATE = 16000
BASE_DEFAULT_STYLE = 8  # "conv-default" global style of the base vocoder
REFERENCE_DEFAULT_STYLE = 0  # vocoder-level default when the caller gives none
DEFAULT_SPEAKER = 2

_REQUIRED = object()


# --------------------------------------------------------------------------- config.json


class _ConfigReader:
    """Typed access to config.json values; every problem names the file and the key."""

    def __init__(self, raw: dict[str, Any], path: Path) -> None:
        self.raw = raw
        self.path = path

    def fail(self, key: str, problem: str) -> CheckpointError:
        return CheckpointError(self.path, f"key {key!r}: {problem}")

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        if key in self.raw and self.raw[key] is not None:
            return self.raw[key]
        if default is _REQUIRED:
            raise self.fail(key, "required key is missing")
        return default

    def flag(self, key: str) -> bool:
        return bool(self.raw.get(key))

    def integer(self, key: str, default: Any = _REQUIRED, minimum: int = 1) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str) -> float:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(key, f"expected a positive number, got {value!r}")
        return float(value)

    def int_list(self, key: str, value: Any = _REQUIRED) -> tuple[int, ...]:
        value = self.get(key) if value is _REQUIRED else value
        ok = isinstance(value, list) and value
        if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise self.fail(key, f"expected a non-empty list of positive integers, got {value!r}")
        return tuple(value)


def _hop_ratio(reader: _ConfigReader, hop_key: str) -> int:
    ratio = round(reader.number(hop_key) / reader.number("code_hop_size"))
    if ratio < 1:
        raise reader.fail(hop_key, "gives an up-sampling ratio below 1 relative to code_hop_size")
    return ratio


def _duration_params(reader: _ConfigReader, embedding_dim: int) -> DurationParams | None:
    raw = reader.raw.get("dur_predictor_params")
    if not raw:
        return None
    if not isinstance(raw, dict):
        raise reader.fail("dur_predictor_params", f"expected an object, got {raw!r}")
    sub = _ConfigReader(raw, reader.path)
    params = DurationParams(
        embed_dim=sub.integer("encoder_embed_dim"),
        hidden_dim=sub.integer("var_pred_hidden_dim"),
        kernel_size=sub.integer("var_pred_kernel_size"),
    )
    if params.embed_dim != embedding_dim:
        raise reader.fail(
            "dur_predictor_params",
            f"encoder_embed_dim {params.embed_dim} differs from embedding_dim {embedding_dim}",
        )
    # conv2 always pads by 1, so only kernels 2 and 3 keep one duration per unit.
    if params.kernel_size not in (2, 3):
        raise reader.fail(
            "dur_predictor_params",
            f"var_pred_kernel_size {params.kernel_size} with the fixed conv2 padding of 1 "
            "does not give one duration per unit (only 2 and 3 do)",
        )
    return params


def _conv_stack_keys(reader: _ConfigReader) -> dict[str, Any]:
    rates = reader.int_list("upsample_rates")
    kernels = reader.int_list("upsample_kernel_sizes")
    if len(kernels) != len(rates):
        raise reader.fail("upsample_kernel_sizes", "must have as many entries as upsample_rates")
    if any(k < u for k, u in zip(kernels, rates, strict=True)):
        raise reader.fail("upsample_kernel_sizes", "every kernel must be >= its upsample rate")
    channels = reader.integer("upsample_initial_channel")
    if channels // 2 ** len(rates) < 1:
        raise reader.fail("upsample_initial_channel", f"{channels} is too small to halve per stage")
    res_kernels = reader.int_list("resblock_kernel_sizes")
    if any(k % 2 == 0 for k in res_kernels):
        raise reader.fail("resblock_kernel_sizes", "kernels must be odd (residual sums need it)")
    dilations = reader.get("resblock_dilation_sizes")
    if not isinstance(dilations, list) or len(dilations) != len(res_kernels):
        raise reader.fail(
            "resblock_dilation_sizes", "expected one list per entry of resblock_kernel_sizes"
        )
    dilation_sets = tuple(reader.int_list("resblock_dilation_sizes", d) for d in dilations)
    if any(len(d) != 3 for d in dilation_sets):
        raise reader.fail("resblock_dilation_sizes", "each entry must have exactly 3 dilations")
    return {
        "upsample_rates": rates,
        "upsample_kernel_sizes": kernels,
        "upsample_initial_channel": channels,
        "resblock_kernel_sizes": res_kernels,
        "resblock_dilation_sizes": dilation_sets,
    }


def parse_config(raw: Any, path: Path) -> HiFiGANConfig:
    """Validate config.json's content against docs/format.md#unit-vocoder."""
    if not isinstance(raw, dict):
        raise CheckpointError(path, "expected a JSON object at the top level")
    reader = _ConfigReader(raw, path)
    if reader.flag("f0"):
        raise reader.fail("f0", "continuous F0 conditioning is not supported")
    embedding_dim = reader.integer("embedding_dim")
    f0_tokens = reader.integer("num_f0_tokens") if reader.flag("num_f0_tokens") else None
    style_tokens = reader.integer("num_style_tokens") if reader.flag("num_style_tokens") else None
    embedder = reader.flag("embedder_params")
    config = HiFiGANConfig(
        **_conv_stack_keys(reader),
        model_in_dim=reader.integer("model_in_dim", 80),
        num_embeddings=reader.integer("num_embeddings"),
        embedding_dim=embedding_dim,
        num_f0_tokens=f0_tokens,
        num_style_tokens=style_tokens,
        hubert_to_f0=_hop_ratio(reader, "f0_hop_size") if f0_tokens else None,
        hubert_to_style=_hop_ratio(reader, "style_hop_size") if style_tokens else None,
        multispkr=reader.flag("multispkr"),
        num_speakers=reader.integer("num_speakers", 200),
        speaker_embedder_dim=reader.integer("embedder_dim", 256) if embedder else None,
        multistyle=reader.flag("multistyle"),
        num_styles=reader.integer("num_styles", 100),
        duration=_duration_params(reader, embedding_dim),
    )
    expected_in = embedding_dim * config.conditioning_count
    if config.model_in_dim != expected_in:
        raise reader.fail(
            "model_in_dim",
            f"{config.model_in_dim} != embedding_dim {embedding_dim} x "
            f"{config.conditioning_count} concatenated embeddings = {expected_in}",
        )
    return config


# --------------------------------------------------------------------------- generator.pt


def _expected_shapes(model: CodeHiFiGAN) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict as stored on disk (weight norm not yet folded)."""
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    for name in model.weight_normed():
        weight = shapes.pop(f"{name}.weight")
        shapes[f"{name}.weight_g"] = (weight[0],) + (1,) * (len(weight) - 1)
        shapes[f"{name}.weight_v"] = weight
    return shapes


def _listing(label: str, keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{label}: {shown}{more}"


def _check_state(state: dict[str, Any], model: CodeHiFiGAN, path: Path) -> None:
    expected = _expected_shapes(model)
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(path, _listing("generator entries that are not tensors", not_tensors))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{key} {tuple(state[key].shape)} (expected {expected[key]})"
        for key in expected
        if key in state and tuple(state[key].shape) != expected[key]
    )
    problems = [
        _listing(label, keys)
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            path, "generator state dict does not match config.json; " + "; ".join(problems)
        )


def _load_generator(path: Path, model: CodeHiFiGAN) -> None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "file is missing") from None
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(path, f"cannot be read as a torch checkpoint: {exc}") from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("generator"), dict):
        raise CheckpointError(path, "key 'generator' (the state dict) is missing")
    state: dict[str, Any] = blob["generator"]
    _check_state(state, model, path)
    normed = set(model.weight_normed())
    folded: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module in normed and leaf in ("weight_g", "weight_v"):
            continue
        folded[key] = value.float()
    for name in normed:
        g, v = state[f"{name}.weight_g"].float(), state[f"{name}.weight_v"].float()
        folded[f"{name}.weight"] = fold_weight_norm(g, v, dim=0)
    model.load_state_dict(folded, strict=True)


def _read_names(path: Path, required: bool) -> list[str]:
    if not path.is_file():
        if required:
            raise CheckpointError(path, "file is missing")
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"cannot be read: {exc}") from exc
    return [line.strip() for line in text.splitlines()]


def _read_config(path: Path) -> HiFiGANConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, "file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON: {exc}") from exc
    return parse_config(raw, path)


# --------------------------------------------------------------------------- input codes


def as_codes(value: Any, name: str) -> list[int]:
    """A code stream given as a space-separated string, a sequence, an array or a tensor."""
    if isinstance(value, str):
        try:
            return [int(piece) for piece in value.split()]
        except ValueError:
            raise UnitFormatError(f"{name}: {value[:40]!r} is not a list of integers") from None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.size == 0:
        return []
    if array.ndim != 1:
        raise UnitFormatError(f"{name}: expected a 1-D sequence of codes, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise UnitFormatError(f"{name}: expected integer codes, got {array.dtype}")
    return [int(v) for v in array]


def collapse_repeats(codes: Sequence[int]) -> list[int]:
    return [c for i, c in enumerate(codes) if i == 0 or c != codes[i - 1]]


def check_upsampling(count: int, ratio: int, length: int, name: str) -> None:
    """The reference's precondition |K * r - N| <= r, as a ValueError instead of an assert."""
    if abs(count * ratio - length) > ratio:
        raise ValueError(
            f"{name}: {count} codes x ratio {ratio} = {count * ratio} frames does not "
            f"match {length} units (the difference must be at most {ratio})"
        )
    if count == 0:
        raise ValueError(f"{name}: no codes given for {length} units")


def upsample_codes(codes: Sequence[int], ratio: int, length: int, name: str) -> list[int]:
    """Repeat each code ``ratio`` times, pad with the last one, cut to ``length`` frames."""
    check_upsampling(len(codes), ratio, length, name)
    frames = [c for c in codes for _ in range(ratio)]
    frames += [frames[-1]] * (length - len(frames))
    return frames[:length]


def check_aligned(count: int, units: int, name: str) -> None:
    """With duration prediction, pitch/style codes pair with units one to one."""
    if count != units:
        raise ValueError(
            f"with duration prediction the {name} codes must match the units one to one "
            f"({count} {name} codes for {units} units)"
        )


def check_range(codes: Sequence[int], size: int, name: str) -> None:
    for position, code in enumerate(codes):
        if not 0 <= code < size:
            raise ValueError(
                f"{name} {code} at position {position} is out of range: valid {name}s are "
                f"0..{size - 1}"
            )


@dataclass(frozen=True)
class FrameCodes:
    """Frame-level (already expanded) code streams, one entry per output frame."""

    units: list[int]
    pitch: list[int] | None
    style: list[int] | None

    def __len__(self) -> int:
        return len(self.units)

    def window(self, start: int, stop: int) -> FrameCodes:
        pitch = None if self.pitch is None else self.pitch[start:stop]
        style = None if self.style is None else self.style[start:stop]
        return FrameCodes(self.units[start:stop], pitch, style)


@dataclass(frozen=True)
class Conditioning:
    """Validated utterance-level ids (None where the vocoder has no such table)."""

    speaker: int | None
    global_style: int | None


# --------------------------------------------------------------------------- the vocoder


class UnitVocoder:
    """A loaded HiFi-GAN unit vocoder (eval mode).

    Parameters are float32 unless ``compute_dtype`` says otherwise: then the conv stack runs in
    that precision (``bfloat16`` is opt-in, docs/benchmarks.md has its measured error) while
    embeddings and duration prediction stay float32.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model: CodeHiFiGAN,
        speakers: list[str],
        styles: list[str],
        device: torch.device,
        default_style: int | None,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        config = model.config
        self.model = model
        self.compute_dtype = compute_dtype
        self.config = config
        self.device = device
        self.speakers = speakers
        self.styles = styles
        self.default_style = REFERENCE_DEFAULT_STYLE if default_style is None else default_style
        self.hop_length = model.hop_length
        self.num_speakers = config.num_speakers if self._speaker_table else 0
        self.has_pitch = config.num_f0_tokens is not None
        self.has_style_codes = config.num_style_tokens is not None
        self.multistyle = config.multistyle
        self.has_duration = config.duration is not None
        self.hubert_to_f0 = config.hubert_to_f0
        self.hubert_to_style = config.hubert_to_style
        self.frame_context = model.frame_context()
        self.duration_context = model.duration_context() if self.has_duration else (0, 0)

    @property
    def _speaker_table(self) -> bool:
        return self.config.multispkr and self.config.speaker_embedder_dim is None

    # ---- validation shared with streaming

    def conditioning(self, speaker: int, global_style: int | None) -> Conditioning:
        speaker_id = None
        if self.config.multispkr:
            if not self._speaker_table:
                raise ValueError("this vocoder takes speaker embeddings, not speaker ids")
            check_range([speaker], self.num_speakers, "speaker")
            speaker_id = speaker
        style_id = None
        if self.multistyle:
            style_id = self.default_style if global_style is None else global_style
            check_range([style_id], self.config.num_styles, "style")
        return Conditioning(speaker_id, style_id)

    def check_units(self, units: Sequence[int]) -> None:
        check_range(units, self.config.num_embeddings, "unit")

    def check_pitch(self, pitch: Sequence[int]) -> None:
        if not self.has_pitch:
            raise ValueError("pitch codes given, but this vocoder has no pitch-code table")
        check_range(pitch, self.config.num_f0_tokens or 0, "pitch code")

    def check_style(self, style: Sequence[int]) -> None:
        if not self.has_style_codes:
            raise ValueError("style codes given, but this vocoder has no style-code table")
        check_range(style, self.config.num_style_tokens or 0, "style code")

    def require_duration(self) -> None:
        if not self.has_duration:
            raise ValueError("duration prediction requested, but this vocoder has no predictor")

    # ---- model calls

    def _codes(self, codes: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(codes), dtype=torch.long, device=self.device).view(1, -1)

    def durations(self, units: Sequence[int]) -> list[int]:
        """Frames per unit from the duration predictor alone: max(1, round(exp(logd) - 1))."""
        self.require_duration()
        codes = as_codes(units, "units")
        if not codes:
            return []
        self.check_units(codes)
        with torch.inference_mode():
            log_d = self.model.log_durations(self._codes(codes))
            frames = torch.clamp(torch.round(torch.exp(log_d) - 1).long(), min=1)
        return frames.view(-1).cpu().tolist()

    def render(
        self, frames: FrameCodes, conditioning: Conditioning, *, pad_left: int = 0
    ) -> np.ndarray:
        """Frame-level codes -> waveform (the generator without any input preparation).

        ``pad_left`` zero frames go in front of the window (`shape_bucket`) and their samples
        are dropped again; the samples of the window's first `frame_context` left frames then
        differ from an unpadded render, every later sample is the same up to float rounding.
        """
        if len(frames) == 0:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            x = self._embed(frames, conditioning)
            if pad_left:
                x = F.pad(x, (pad_left, 0))
            wav = self.model.decode(x.to(self.compute_dtype))
        return wav.view(-1)[pad_left * self.hop_length :].float().cpu().numpy()

    def render_batch(
        self, windows: Sequence[tuple[FrameCodes, Conditioning]], frames: int = 0
    ) -> list[np.ndarray]:
        """Windows in one forward pass, padded on the right with zero frames to one length (at
        least ``frames``); window i gives its ``len(frames_i) * hop`` samples.

        Because of the padding, samples within the generator's right receptive field
        (`frame_context`) of a window's end are not what `render` gives for that window alone
        (nor are any extra samples a transposed convolution adds at the very end); every other
        sample is the same up to float rounding. Streaming windows carry that right context and
        keep only the samples before it, which is why their chunks can be rendered together
        across streams, at bucketed lengths.
        """
        with torch.inference_mode():
            inputs = [self._embed(codes, conditioning) for codes, conditioning in windows]
            width = max(frames, *(x.shape[2] for x in inputs))
            padded = torch.cat([F.pad(x, (0, width - x.shape[2])) for x in inputs])
            wavs = self.model.decode(padded.to(self.compute_dtype)).float().cpu()
        hop = self.hop_length
        return [wavs[i, 0, : x.shape[2] * hop].numpy() for i, x in enumerate(inputs)]

    def incremental_decoder(self) -> IncrementalDecoder:
        """A decoder that keeps one stream's layer state between chunks."""
        return IncrementalDecoder(self.model)

    def render_incremental(
        self, decoder: IncrementalDecoder, frames: FrameCodes, conditioning: Conditioning
    ) -> np.ndarray:
        """Feed a stream's next frames to its decoder; the samples that became final."""
        with torch.inference_mode():
            x = self._embed(frames, conditioning).to(self.compute_dtype)
            return decoder.decode(x).view(-1).float().cpu().numpy()

    def warm_up_incremental(self) -> int:
        """Build the kernels of the calls incremental streams make (`incremental.warm_up`) and
        of their last windows: the frames the decoder has not released (its lag and less than
        a block more) with their left receptive field. Returns how many passes were run."""
        left, right = self.frame_context
        calls = warm_up_steps(self.model, self.config.model_in_dim, self.compute_dtype, self.device)
        return calls + self.warm_up(left + right + STEP_FRAMES)

    def warm_up_streams(self, max_chunk_units: int) -> int:
        """`warm_up` for the windows of streams whose chunks take up to `max_chunk_units` units
        (about two frames each: HuBERT units are de-duplicated) plus the receptive field."""
        left, right = self.frame_context
        return self.warm_up(2 * max_chunk_units + left + right)

    def warm_up(self, longest: int) -> int:
        """Run one pass at every bucketed length up to `longest` frames (`shape_bucket`), so no
        stream pays for building kernels; returns how many lengths were run."""
        conditioning = self.conditioning(0, None)
        lengths = range(SHAPE_BUCKET_FRAMES, shape_bucket(longest) + 1, SHAPE_BUCKET_FRAMES)
        for length in lengths:
            pitch = [0] * length if self.has_pitch else None
            style = [0] * length if self.has_style_codes else None
            self.render_batch([(FrameCodes([0] * length, pitch, style), conditioning)], length)
        return len(lengths)

    def _embed(self, frames: FrameCodes, conditioning: Conditioning) -> torch.Tensor:
        ids = (conditioning.speaker, conditioning.global_style)
        speaker, style = (None if i is None else self._codes([i]) for i in ids)
        return self.model.embed(
            self._codes(frames.units),
            None if frames.pitch is None else self._codes(frames.pitch),
            None if frames.style is None else self._codes(frames.style),
            speaker,
            style,
        )

    # ---- one-shot synthesis

    def prepare_units(self, units: Any, *, dur_pred: bool, deduplicated: bool) -> list[int]:
        codes = as_codes(units, "units")
        if dur_pred and not deduplicated:
            codes = collapse_repeats(codes)
        # Negative codes mean "no unit" (docs/format.md#unit-vocoder).
        codes = [c for c in codes if c >= 0]
        self.check_units(codes)
        return codes

    def _stream(self, value: Any, name: str, present: bool) -> list[int] | None:
        if value is None:
            if present:
                raise ValueError(f"this vocoder needs {name}s")
            return None
        codes = as_codes(value, name)
        if name == "pitch code":
            self.check_pitch(codes)
        else:
            self.check_style(codes)
        return codes

    def frame_codes(
        self,
        units: list[int],
        pitch: list[int] | None,
        style: list[int] | None,
        dur_pred: bool,
    ) -> FrameCodes:
        """Expand prepared unit/pitch/style codes to one entry per output frame."""
        n = len(units)
        if not dur_pred:
            if pitch is not None:
                pitch = upsample_codes(pitch, self.hubert_to_f0 or 1, n, "pitch codes")
            if style is not None:
                style = upsample_codes(style, self.hubert_to_style or 1, n, "style codes")
            return FrameCodes(units, pitch, style)
        self.require_duration()
        for name, codes in (("pitch", pitch), ("style", style)):
            if codes is not None:
                check_aligned(len(codes), n, name)
        durations = self.durations(units)
        return FrameCodes(
            _repeat(units, durations),
            None if pitch is None else _repeat(pitch, durations),
            None if style is None else _repeat(style, durations),
        )

    def synthesize(
        self,
        units: Sequence[int],
        pitch: Sequence[int] | None = None,
        style: Sequence[int] | None = None,
        *,
        speaker: int = DEFAULT_SPEAKER,
        global_style: int | None = None,
        dur_pred: bool = True,
        deduplicated: bool = True,
    ) -> np.ndarray:
        """Units (+ pitch/style codes) -> 1-D float32 waveform at 16 kHz.

        See docs/format.md#unit-vocoder.
        """
        conditioning = self.conditioning(speaker, global_style)
        codes = self.prepare_units(units, dur_pred=dur_pred, deduplicated=deduplicated)
        pitch_codes = self._stream(pitch, "pitch code", self.has_pitch)
        style_codes = self._stream(style, "style code", self.has_style_codes)
        if dur_pred:
            self.require_duration()
        if not codes:
            return np.zeros(0, dtype=np.float32)
        frames = self.frame_codes(codes, pitch_codes, style_codes, dur_pred)
        return self.render(frames, conditioning)


# Forward passes run at window lengths rounded up to a multiple of this many frames (1.28 s).
# oneDNN builds (and caches) kernels per input shape, and a new shape costs more than the pass
# itself (official size, one CPU thread: 90 frames 270 ms, 450 ms the first time in float32;
# 140 ms and 740 ms in bfloat16), so lengths are kept to few shapes (CUDA graphs need that too).
# Each cached shape holds memory (about 30 MB in float32, 100 MB in bfloat16 at official size):
# 32 frames is a compromise between that and the padding's cost (docs/benchmarks.md).
SHAPE_BUCKET_FRAMES = 32


def shape_bucket(frames: int) -> int:
    """The padded length of a window of `frames` frames."""
    return -(-frames // SHAPE_BUCKET_FRAMES) * SHAPE_BUCKET_FRAMES


def _repeat(codes: Sequence[int], durations: Sequence[int]) -> list[int]:
    return [c for c, d in zip(codes, durations, strict=True) for _ in range(d)]


def load_vocoder(
    vocoder_dir: Path,
    device: torch.device | str = "cpu",
    *,
    default_style: int | None = BASE_DEFAULT_STYLE,
    dtype: Precision = "float32",
) -> UnitVocoder:
    """Load one official vocoder directory.

    ``dtype`` is the precision of the conv stack: "float32" (the reference's) or "bfloat16".
    ``default_style`` is the global style used when ``multistyle`` is on and the caller gives
    none: 8 for the base vocoder (the default); pass None for the reference's vocoder-level
    default 0 (what the expressive vocoder would use if its config enabled ``multistyle``).
    """
    vocoder_dir = Path(vocoder_dir)
    config = _read_config(vocoder_dir / "config.json")
    model = CodeHiFiGAN(config)
    _load_generator(vocoder_dir / "generator.pt", model)
    speakers = _read_names(vocoder_dir / "speakers.txt", required=True)
    styles = _read_names(vocoder_dir / "styles.txt", required=False)
    target = torch.device(device)
    model = model.to(target).float().eval()
    compute_dtype = DTYPES[dtype]
    if compute_dtype != torch.float32:
        model.cast_conv_stack(compute_dtype, channels_last=channels_last_pays(dtype, target))
    add_yield_points(model.ups, model.resblocks)
    return UnitVocoder(model, speakers, styles, target, default_style, compute_dtype)
