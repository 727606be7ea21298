"""The `spiritlm` command line: speech and Spirit LM generation from a shell.

    spiritlm transcribe FILE
    spiritlm speak "text" -o out.wav [--voice 1] [--format mp3]
    spiritlm generate --input text:"Hello" --input speech:q.wav --output-modality speech [-o gen]
    spiritlm chat [--audio-out DIR]
    spiritlm tokenize FILE | detokenize TOKENS -o out.wav | models | health
    spiritlm converse --input question.wav -o reply.wav [--speed 1] [--vad]

Global: --base-url (env SPIRITLM_BASE_URL, default http://127.0.0.1:8000) and --api-key
(env SPIRITLM_API_KEY).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from spiritlm_client import commands, converse
from spiritlm_client.calls import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from spiritlm_client.errors import SpiritLMConnectionError, SpiritLMError
from spiritlm_client.files import FORMATS
from spiritlm_client.sync_client import SpiritLM


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spiritlm", description="Client of a spiritlm-serve gateway."
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help=f"gateway URL (env {BASE_URL_ENV}; default {DEFAULT_BASE_URL})",
    )
    parser.add_argument("--api-key", default=None, help=f"API key (env {API_KEY_ENV})")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_transcribe(sub)
    _add_classify(sub)
    _add_speak(sub)
    _add_generate(sub)
    _add_chat(sub)
    _add_units(sub)
    converse.add_parser(sub)  # realtime (WebSocket) conversation; lives in converse.py
    sub.add_parser("models", help="list the served models").set_defaults(handler=commands.models)
    sub.add_parser("health", help="readiness of the gateway and its workers").set_defaults(
        handler=commands.health
    )
    return parser


def _add_transcribe(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("transcribe", help="speech recognition of an audio file")
    command.add_argument("file")
    command.add_argument("--model")
    command.add_argument("--prompt", help="context text for the transcription")
    command.add_argument(
        "--response-format", default="text", choices=["json", "text", "verbose_json", "srt", "vtt"]
    )
    command.add_argument("--temperature", type=float)
    command.set_defaults(handler=commands.transcribe)


def _add_classify(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("classify", help="few-shot speech classification of an audio file")
    command.add_argument("file")
    command.add_argument(
        "--label",
        dest="labels",
        action="append",
        help="a candidate label (repeatable; default: the gateway's classification bank)",
    )
    command.add_argument("--model")
    command.add_argument("--json", action="store_true", help="print every label's score")
    command.set_defaults(handler=commands.classify)


def _add_sampling(command: argparse.ArgumentParser) -> None:
    command.add_argument("--temperature", type=float)
    command.add_argument("--top-p", type=float)
    command.add_argument("--seed", type=int)
    command.add_argument("--max-tokens", type=int)


def _add_speak(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("speak", help="text to speech, streamed into a file")
    command.add_argument("text")
    command.add_argument("-o", "--output", help="audio file ('-' = stdout; default speech.FMT)")
    command.add_argument("--voice", help="speaker index or name (GET /v1/audio/voices)")
    command.add_argument("--format", choices=FORMATS, help="default: from the -o suffix, or wav")
    command.add_argument("--model")
    command.add_argument("--sample-rate", type=int)
    _add_sampling(command)
    command.set_defaults(handler=commands.speak)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("generate", help="interleaved speech/text generation")
    command.add_argument(
        "--input",
        action="append",
        default=[],
        help="text:STRING, speech:FILE or tokens:[Hu1][Hu2]... (repeat, in order)",
    )
    command.add_argument("--prompt", help="an explicit Spirit LM prompt, used verbatim")
    command.add_argument(
        "--output-modality", default="arbitrary", choices=["text", "speech", "arbitrary"]
    )
    command.add_argument("-o", "--output-prefix", default="generated", help="speech files prefix")
    command.add_argument("--format", default="wav", choices=FORMATS, help="speech file format")
    command.add_argument("--speaker", type=int)
    command.add_argument("--model")
    command.add_argument("--stream", action="store_true", help="print text as it is generated")
    command.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_sampling(command)
    command.set_defaults(handler=commands.generate)


def _add_chat(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("chat", help="interactive chat (one line per turn; /exit, /reset)")
    command.add_argument("--system", help="system message")
    command.add_argument("--audio-out", help="answer in speech; save each reply in this folder")
    command.add_argument("--voice", help="speaker of spoken replies")
    command.add_argument("--model")
    command.add_argument("--session-id", help="keeps the conversation on one LM replica")
    _add_sampling(command)
    command.set_defaults(handler=commands.chat)


def _add_units(sub: argparse._SubParsersAction) -> None:
    tokenize = sub.add_parser("tokenize", help="audio file -> speech units and token string")
    tokenize.add_argument("file")
    tokenize.add_argument("--model")
    tokenize.set_defaults(handler=commands.tokenize)
    detokenize = sub.add_parser("detokenize", help="token string -> audio file")
    detokenize.add_argument("tokens")
    detokenize.add_argument("-o", "--output", required=True)
    detokenize.add_argument("--speaker")
    detokenize.add_argument("--format", choices=FORMATS)
    detokenize.add_argument("--model")
    detokenize.set_defaults(handler=commands.detokenize)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = SpiritLM(args.base_url, args.api_key, timeout=args.timeout)
    try:
        return int(args.handler(client, args) or 0)
    except SpiritLMConnectionError as error:
        _fail(f"cannot reach the gateway at {client.base_url}: {error.message}")
    except SpiritLMError as error:
        where = f" [{error.param}]" if error.param else ""
        _fail(f"{error.status}: {error.message}{where}")
    except BrokenPipeError:
        # The reader went away (`spiritlm ... | head`): not an error worth a message.
        _silence_stdout()
        return 0
    except (OSError, ValueError) as error:
        _fail(str(error))
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    return 1


def _silence_stdout() -> None:
    # Python flushes stdout at exit; pointing it at /dev/null keeps that flush from failing too.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _fail(message: str) -> None:
    print(f"spiritlm: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
