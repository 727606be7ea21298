"""`spiritlm converse --input question.wav -o reply.wav`: one spoken turn over WS /v1/realtime."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from spiritlm_client.files import write_pcm16_wav
from spiritlm_client.realtime import converse
from spiritlm_client.sync_client import SpiritLM


def add_parser(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser(
        "converse", help="say a WAV file to the model (realtime API) and save its spoken reply"
    )
    command.add_argument("--input", required=True, help="16-bit PCM WAV file (any rate)")
    command.add_argument("-o", "--output", default="reply.wav", help="reply WAV (24 kHz)")
    command.add_argument("--model")
    command.add_argument("--voice", help="speaker index or name")
    command.add_argument("--max-tokens", type=int, help="longest reply, in tokens")
    command.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    command.add_argument(
        "--speed", type=float, default=1.0, help="x real time to stream the file (0 = at once)"
    )
    command.add_argument(
        "--vad", action="store_true", help="let the server's VAD end the turn (else: commit)"
    )
    command.set_defaults(handler=run)


def run(client: SpiritLM, args: argparse.Namespace) -> int:
    def show(event: dict[str, Any]) -> None:
        if not args.quiet and event["type"] == "input_audio_buffer.committed":
            print("turn sent; waiting for the reply...", file=sys.stderr)

    reply = asyncio.run(
        converse(
            args.input,
            base_url=client.base_url,
            api_key=args.api_key,
            model=args.model,
            voice=args.voice,
            speed=args.speed,
            server_vad=args.vad,
            max_output_tokens=args.max_tokens,
            temperature=args.temperature,
            on_event=show,
        )
    )
    seconds = write_pcm16_wav(args.output, reply.audio, reply.sample_rate)
    if not args.quiet:
        latency = reply.first_audio_seconds
        first = f", first audio after {latency:.2f} s" if latency is not None else ""
        print(
            f"reply {reply.status}: {seconds:.2f} s of audio -> {args.output}{first}",
            file=sys.stderr,
        )
    print(reply.transcript or reply.text)
    return 0 if reply.status in ("completed", "incomplete") else 1
