"""`generate`: one interleaved generation through vLLM, from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from service.commands.common import add_checkpoint_flags, layout_from_args, log
from service.config import Settings, add_settings_arguments, resolve_device
from service.errors import SpiritError
from service.process import free_port, lm_worker_log_path


def parse_input(value: str) -> tuple[str, str]:
    kind, sep, content = value.partition(":")
    if not sep or kind not in ("text", "speech"):
        raise SpiritError(f"--input {value!r}: expected text:STRING or speech:FILE")
    return kind, content


def run_generate(args: argparse.Namespace) -> int:
    from service.lm.client import LMError
    from service.lm.stops import stops_problem
    from service.lm.worker import start_lm_worker

    settings, layout = layout_from_args(args, lm=True, speech=True)
    inputs = [parse_input(value) for value in args.input]
    problem = stops_problem(args.stop)
    if problem is not None:
        raise SpiritError(f"--{problem}")
    worker = None
    lm_url = args.lm_url
    if lm_url is None:
        port = free_port()
        extra = ["--dtype", args.dtype] if args.dtype else []
        log(f"LM worker log: {lm_worker_log_path(port)}")
        worker = start_lm_worker(
            layout.lm_dir(settings.model),
            settings.model,
            port=port,
            extra_args=extra,
            log_path=lm_worker_log_path(port),
            progress=log,
        )
        lm_url = f"http://127.0.0.1:{port}"
    try:
        record = asyncio.run(_generate(args, settings, layout, inputs, lm_url))
    except LMError as error:
        log(f"error: {error} (LM worker at {lm_url})")
        return 1
    finally:
        if worker is not None:
            worker.stop()
    if args.json:
        print(json.dumps(record), flush=True)
    else:
        _print_human(record)
    return 0


async def _generate(args, settings, layout, inputs, lm_url: str) -> dict[str, Any]:  # noqa: ANN001
    import soundfile

    from service.audio.decode import load_audio_file
    from service.lm.client import LMClient, SamplingParams
    from service.lm.ending import Ending
    from service.lm.generation import Generator
    from service.lm.parsing import SpeechSegment, parse_output_report
    from service.lm.prompt import SpeechInput, TextInput, build_prompt
    from service.lm.tokenizer import SpiritTokenizer
    from service.speech.pipeline import SpeechStack

    stack = SpeechStack(layout, settings.model, device=resolve_device(settings.device))
    parts = [
        TextInput(content)
        if kind == "text"
        else SpeechInput(stack.encode_string(load_audio_file(content)))
        for kind, content in inputs
    ]
    prompt = build_prompt(parts, args.output_modality)
    tokenizer = SpiritTokenizer.from_dir(layout.lm_dir(settings.model))
    # A running LM worker (--lm-url) may require the internal credential (docs/security.md).
    client = LMClient(lm_url, settings.model, api_key=settings.internal_api_key.get_secret_value())
    generator = Generator(tokenizer, client, expressive=stack.expressive)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    prepared = generator.prepare(prompt, args.output_modality)
    ending = Ending(stops=tuple(args.stop))
    try:
        _, result = await generator.run(prepared, params, ending)
    finally:
        await client.aclose()
    generated = tokenizer.decode_ids(prepared.prompt_ids + result.output_ids)[
        len(tokenizer.decode_ids(prepared.prompt_ids)) :
    ]
    report = parse_output_report(prompt, generated, prepared.modality, expressive=stack.expressive)
    segments: list[dict[str, Any]] = []
    for index, segment in enumerate(report.segments):
        if not isinstance(segment, SpeechSegment):
            segments.append({"type": "text", "text": ending.cut_text(segment.text)})
            continue
        wav = stack.decode(segment.tokens, speaker=args.speaker)
        if segment.trim is not None:
            wav = segment.trim.apply(wav)
        path = Path(f"{args.output_prefix}_{index}.wav")
        soundfile.write(path, wav, stack.sample_rate, subtype="PCM_16")
        segments.append(
            {
                "type": "speech",
                "tokens": segment.tokens,
                "audio": str(path),
                "seconds": round(len(wav) / stack.sample_rate, 3),
            }
        )
    return {
        "model": settings.model,
        "prompt": prompt,
        "prompt_token_ids": prepared.prompt_ids,
        "output_token_ids": result.output_ids,
        "finish_reason": result.finish_reason,
        "end": result.end,
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
        },
        "segments": segments,
        "dropped": [{"tokens": d.tokens, "reason": d.reason} for d in report.dropped],
    }


def _print_human(record: dict[str, Any]) -> None:
    print(f"prompt: {record['prompt'][:200]}")
    for segment in record["segments"]:
        if segment["type"] == "text":
            print(f"[text] {segment['text']}")
        else:
            print(f"[speech] {segment['seconds']} s -> {segment['audio']}")


def register(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser("generate", help="one interleaved generation through vLLM")
    add_checkpoint_flags(generate)
    generate.add_argument(
        "--input", action="append", required=True, help="text:STRING or speech:FILE (repeatable)"
    )
    generate.add_argument(
        "--output-modality", choices=["text", "speech", "arbitrary"], default="arbitrary"
    )
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--repetition-penalty", type=float, default=1.0)
    generate.add_argument("--max-tokens", type=int, default=200)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument(
        "--stop",
        action="append",
        default=[],
        help="end the output at this string (repeatable, up to 4; matched within text)",
    )
    generate.add_argument("--dtype", default=None, help="vLLM dtype when starting the LM worker")
    generate.add_argument("--speaker", type=int, default=2)
    generate.add_argument("--lm-url", default=None, help="use a running LM worker")
    add_settings_arguments(generate, Settings, ("internal_api_key",))
    generate.add_argument("--json", action="store_true")
    generate.add_argument("-o", "--output-prefix", default="generated")
    generate.set_defaults(handler=run_generate)
