"""What each `spiritlm` command does (argument parsing is in cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any

from spiritlm_client.calls import GenerateInput
from spiritlm_client.files import finalize_wav, format_for, wav_seconds, write_pcm16_wav
from spiritlm_client.progress import Progress
from spiritlm_client.sync_client import SpiritLM
from spiritlm_client.types import ChatReply, Generation

INPUT_KINDS = ("text", "speech", "tokens")


def _progress(args: argparse.Namespace, label: str) -> Progress:
    return Progress(label, live=False if args.quiet else None, summary=not args.quiet)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    values = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
    }
    return {name: value for name, value in values.items() if value is not None}


def models(client: SpiritLM, args: argparse.Namespace) -> int:
    for name in client.models():
        print(name)
    return 0


def health(client: SpiritLM, args: argparse.Namespace) -> int:
    report = client.ready()
    print(json.dumps(report, indent=2))
    return 0 if report.get("status") == "ready" else 1


def transcribe(client: SpiritLM, args: argparse.Namespace) -> int:
    with _progress(args, "transcribe"):
        text = client.transcribe(
            args.file,
            model=args.model,
            prompt=args.prompt,
            temperature=args.temperature,
            response_format=args.response_format,
        )
    print(text if text.endswith("\n") else text + "\n", end="")
    return 0


def classify(client: SpiritLM, args: argparse.Namespace) -> int:
    with _progress(args, "classify"):
        result = client.classify(args.file, args.labels, model=args.model)
    if args.json:
        scores = [
            {"label": label, "logprob": logprob, "probability": probability}
            for label, logprob, probability in result.scores
        ]
        print(json.dumps({"label": result.label, "shots": result.shots, "scores": scores}))
    else:
        print(result.label)
    return 0


def speak(client: SpiritLM, args: argparse.Namespace) -> int:
    fmt = format_for(args.output, args.format)
    output = args.output or f"speech.{fmt}"
    extra = _sampling(args)
    if args.max_tokens is not None:
        extra["max_tokens"] = args.max_tokens
    chunks = client.iter_speak(
        args.text,
        voice=args.voice,
        format=fmt,
        model=args.model,
        sample_rate=args.sample_rate,
        **extra,
    )
    to_stdout = output == "-"
    target: Any = nullcontext(sys.stdout.buffer) if to_stdout else open(output, "wb")  # noqa: SIM115
    with _progress(args, "speak") as progress, target as sink:
        for chunk in chunks:
            sink.write(chunk)
            progress.add(len(chunk))
    if not to_stdout:
        if fmt == "wav":
            finalize_wav(Path(output))
        _note(args, f"saved {output}")
    return 0


# ---- generate ---------------------------------------------------------------------------------


def parse_input(value: str) -> GenerateInput:
    kind, sep, content = value.partition(":")
    if not sep or kind not in INPUT_KINDS:
        raise ValueError(f"--input {value!r}: expected text:STRING, speech:FILE or tokens:STRING")
    if kind == "speech":
        return ("speech", Path(content))
    return (kind, content)


def generate(client: SpiritLM, args: argparse.Namespace) -> int:
    inputs = [parse_input(value) for value in args.input]
    if not inputs and args.prompt is None:
        raise ValueError("give at least one --input (or --prompt)")
    options: dict[str, Any] = {
        "output_modality": args.output_modality,
        "prompt": args.prompt,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "speaker": args.speaker,
        **_sampling(args),
    }
    if args.stream:
        return _generate_streamed(client, args, inputs, options)
    with _progress(args, "generate"):
        result = client.generate(inputs, format=args.format, **options)
    _print_generation(args, result)
    return 0


def _print_generation(args: argparse.Namespace, result: Generation) -> None:
    saved: list[dict[str, Any]] = []
    for index, segment in enumerate(result.segments):
        if segment.type == "text":
            saved.append({"type": "text", "text": segment.text})
            if not args.json:
                print(segment.text)
            continue
        path = Path(f"{args.output_prefix}_{index}.{segment.format or args.format}")
        path.write_bytes(segment.audio)
        entry = {"type": "speech", "tokens": segment.tokens, "audio": str(path)}
        saved.append({**entry, "seconds": segment.seconds})
        if not args.json:
            print(f"[speech {segment.seconds:.2f} s] -> {path}")
    if args.json:
        print(json.dumps(_summary(result, saved)))


def _summary(result: Generation, segments: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": result.model,
        "prompt": result.prompt,
        "prompt_token_ids": result.prompt_token_ids,
        "output_token_ids": result.output_token_ids,
        "finish_reason": result.finish_reason,
        "usage": result.usage,
        "segments": segments,
        "dropped": result.dropped,
    }


def _generate_streamed(
    client: SpiritLM, args: argparse.Namespace, inputs: list, options: dict[str, Any]
) -> int:
    """Text printed as it comes; each speech segment saved as WAV when the stream ends."""
    audio: dict[int, bytearray] = {}
    kinds: dict[int, str] = {}
    rate = 16000
    result: Generation | None = None
    with _progress(args, "generate") as progress:
        for event in client.iter_generate(inputs, **options):
            if event.type == "segment.start" and event.index is not None:
                kinds[event.index] = event.kind or ""
                if event.kind == "text" and not args.json:
                    progress.stop()
            elif event.type == "text.delta" and not args.json:
                print(event.text, end="", flush=True)
            elif event.type == "audio.delta" and event.index is not None:
                audio.setdefault(event.index, bytearray()).extend(event.audio)
                rate = event.sample_rate or rate
                progress.add(len(event.audio))
            elif event.type == "done":
                result = event.generation
    if any(kind == "text" for kind in kinds.values()) and not args.json:
        print()
    saved = []
    for index, pcm in sorted(audio.items()):
        path = Path(f"{args.output_prefix}_{index}.wav")
        seconds = write_pcm16_wav(path, bytes(pcm), rate)
        saved.append({"type": "speech", "audio": str(path), "seconds": round(seconds, 3)})
        if not args.json:
            print(f"[speech {seconds:.2f} s] -> {path}")
    if args.json and result is not None:
        print(json.dumps(_summary(result, saved)))
    return 0


# ---- chat -------------------------------------------------------------------------------------


def chat(client: SpiritLM, args: argparse.Namespace) -> int:
    """A REPL: each input line is a user turn; the history is resent every turn."""
    audio_dir = Path(args.audio_out) if args.audio_out else None
    if audio_dir is not None:
        audio_dir.mkdir(parents=True, exist_ok=True)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, Any]] = []
    interactive = sys.stdin.isatty()
    turn = 0
    while True:
        line = _read_line(interactive)
        if line is None or line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = []
            continue
        if not line.strip():
            continue
        turn += 1
        messages = [*system, *history, {"role": "user", "content": line}]
        if audio_dir is None:
            reply = _chat_text(client, args, messages)
        else:
            reply = _chat_audio(client, args, messages, audio_dir / f"reply-{turn}.wav")
        history += [{"role": "user", "content": line}, reply.as_message()]


def _read_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            print()
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def _chat_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "session_id": args.session_id,
        **_sampling(args),
    }


def _chat_text(client: SpiritLM, args: argparse.Namespace, messages: list) -> ChatReply:
    deltas = []
    with _progress(args, "reply") as progress:
        started = False
        for delta in client.iter_chat(messages, **_chat_options(args)):
            deltas.append(delta)
            if delta.text:
                if not started:
                    progress.stop()
                    _write(sys.stdout, "assistant> ")
                    started = True
                _write(sys.stdout, delta.text)
        if not started:
            progress.stop()
            _write(sys.stdout, "assistant> ")
        _write(sys.stdout, "\n")
    return ChatReply.from_deltas(deltas)


def _chat_audio(
    client: SpiritLM, args: argparse.Namespace, messages: list, path: Path
) -> ChatReply:
    with _progress(args, "reply") as progress:
        reply = client.chat(
            messages, audio=True, voice=args.voice, format="wav", **_chat_options(args)
        )
        progress.add(len(reply.audio or b""))
    path.write_bytes(reply.audio or b"")
    seconds = wav_seconds(reply.audio or b"") or 0.0
    print(f"assistant> [speech {seconds:.2f} s] -> {path}", flush=True)
    return reply


def _write(stream: IO[str], text: str) -> None:
    stream.write(text)
    stream.flush()


# ---- units ------------------------------------------------------------------------------------


def tokenize(client: SpiritLM, args: argparse.Namespace) -> int:
    with _progress(args, "tokenize"):
        result = client.tokenize(args.file, model=args.model)
    payload = {
        "model": result.model,
        "seconds": result.seconds,
        "units": result.units,
        "tokens": result.tokens,
    }
    print(json.dumps(payload))
    return 0


def detokenize(client: SpiritLM, args: argparse.Namespace) -> int:
    fmt = format_for(args.output, args.format)
    speaker = int(args.speaker) if args.speaker and args.speaker.isdigit() else args.speaker
    with _progress(args, "detokenize") as progress:
        audio = client.detokenize(args.tokens, model=args.model, speaker=speaker, format=fmt)
        progress.add(len(audio))
    Path(args.output).write_bytes(audio)
    _note(args, f"saved {args.output}")
    return 0


def _note(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)
