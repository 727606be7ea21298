"""`tokenize` and `synthesize`: the speech stack from the command line.

torch and the models are imported only once the inputs and the checkpoint files have been checked,
so that a mistake on the command line is reported in about a second, not after model loading.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from service.commands.common import add_checkpoint_flags, checked_device, layout_from_args, log
from service.errors import SpiritError, UnitFormatError
from service.units.tokens import Units, string_to_units, units_to_string

if TYPE_CHECKING:
    from service.speech.pipeline import SpeechStack


def speech_stack(args: argparse.Namespace) -> SpeechStack:
    settings, layout = layout_from_args(args, lm=False, speech=True)
    from service.speech.pipeline import SpeechStack

    return SpeechStack(layout, settings.model, device=checked_device(settings.device))


def run_tokenize(args: argparse.Namespace) -> int:
    stack = speech_stack(args)
    from service.audio.decode import load_audio_file

    for path in args.audio:
        units = stack.encode_units(load_audio_file(path))
        tokens = units_to_string(units, expressive=stack.expressive)
        if args.json:
            record = {"audio": str(path), "units": units.to_dict(), "tokens": tokens}
            print(json.dumps(record), flush=True)
        else:
            print(f"{path}: {len(units.hubert)} HuBERT units\n{tokens}", flush=True)
    return 0


def read_units_json(path: Path) -> Units:
    """A units dictionary (docs/format.md), or the object `tokenize --json` prints (its `units`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SpiritError(f"{path}: cannot read units JSON: {error}") from error
    if isinstance(data, dict) and isinstance(data.get("units"), dict):
        data = data["units"]
    if not isinstance(data, dict):
        raise SpiritError(f"{path}: expected a JSON object with 'hubert' (and 'pitch', 'style')")
    try:
        return Units.from_dict(data)
    except UnitFormatError as error:
        raise UnitFormatError(f"{path}: {error}") from None


def check_output(path: Path) -> None:
    """Refuse an output path that cannot be written before spending time on synthesis."""
    if path.is_dir():
        raise SpiritError(f"{path}: output is a directory; give a .wav file name")
    if not path.parent.is_dir():
        raise SpiritError(f"{path}: output directory {path.parent} does not exist")


def run_synthesize(args: argparse.Namespace) -> int:
    import soundfile

    if args.tokens is not None:
        units, source = string_to_units(args.tokens), "--tokens"
    else:
        units, source = read_units_json(args.units_json), str(args.units_json)
    if not units.hubert:
        raise SpiritError(f"{source}: no HuBERT units, nothing to synthesize")
    check_output(args.output)
    stack = speech_stack(args)
    wav = stack.decode(units, speaker=args.speaker, dur_pred=not args.no_duration_prediction)
    soundfile.write(args.output, wav, stack.sample_rate, subtype="PCM_16")
    log(f"wrote {args.output}: {len(wav)} samples ({len(wav) / stack.sample_rate:.2f} s)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    tokenize = commands.add_parser("tokenize", help="audio files -> units and token strings")
    add_checkpoint_flags(tokenize)
    tokenize.add_argument("audio", nargs="+", type=Path)
    tokenize.add_argument("--json", action="store_true", help="one JSON object per file")
    tokenize.set_defaults(handler=run_tokenize)

    synthesize = commands.add_parser("synthesize", help="token string or units -> wav")
    add_checkpoint_flags(synthesize)
    source = synthesize.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokens", help="token string such as [Hu12][Hu7]...")
    source.add_argument("--units-json", type=Path, help="JSON units dict (or tokenize output)")
    synthesize.add_argument("--speaker", type=int, default=2)
    synthesize.add_argument("--no-duration-prediction", action="store_true")
    synthesize.add_argument("-o", "--output", required=True, type=Path)
    synthesize.set_defaults(handler=run_synthesize)
