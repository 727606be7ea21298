"""`gateway`: the API process in front of the LM and speech workers."""

from __future__ import annotations

import argparse

from service.commands.common import log, pin_to_configured_cores
from service.config import add_settings_arguments, settings_from_args
from service.gateway.settings import GatewaySettings


def run_gateway(args: argparse.Namespace) -> int:
    settings: GatewaySettings = settings_from_args(args, GatewaySettings)
    if not settings.lm_urls or not settings.speech_urls:
        log("error: the gateway needs --lm-url and --speech-url (or SPIRITLM_LM_URLS/SPEECH_URLS)")
        return 2
    if not pin_to_configured_cores(settings):
        return 2
    from service.gateway.server import serve_gateway  # after pinning: it loads torch

    serve_gateway(settings)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("gateway", help="run the API gateway")
    add_settings_arguments(parser, GatewaySettings)
    parser.set_defaults(handler=run_gateway)
