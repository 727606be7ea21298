"""Settings: env vars and flags with the same names, lists, the generated reference, and how
`up` routes its flags to its children."""

from __future__ import annotations

import argparse

import pytest

from service.cli import main, parse_args
from service.commands.config_reference import render_reference
from service.commands.up import route_flags
from service.config import add_settings_arguments, settings_from_args
from service.gateway.settings import GatewaySettings
from service.speech_worker.settings import SpeechWorkerSettings
from tests.support.paths import REPO


def test_configuration_reference_is_up_to_date() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render_reference(), (
        "run: spiritlm-serve config-reference -o docs/configuration.md"
    )


def test_every_setting_is_a_flag_of_its_command_and_documented() -> None:
    text = render_reference()
    for command, model in (("gateway", GatewaySettings), ("speech-worker", SpeechWorkerSettings)):
        args = parse_args([command])
        for name in model.model_fields:
            assert hasattr(args, name), f"{command} has no flag for {name}"
            assert f"`SPIRITLM_{name.upper()}`" in text
    assert "`--lm-url` | `SPIRITLM_LM_URLS`" in text


def test_worker_urls_are_repeated_flags() -> None:
    args = parse_args(["gateway", "--lm-url", "http://a:1", "--lm-url", "http://b:2"])
    settings = settings_from_args(args, GatewaySettings)
    assert settings.lm_urls == ["http://a:1", "http://b:2"]


def test_lists_come_comma_separated_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIRITLM_LM_URLS", "http://a:1, http://b:2")
    monkeypatch.setenv("SPIRITLM_API_KEYS", "k1,k2")
    settings = GatewaySettings()
    assert settings.lm_urls == ["http://a:1", "http://b:2"]
    assert settings.api_keys == ["k1", "k2"]


def test_a_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIRITLM_PORT", "9000")
    monkeypatch.setenv("SPIRITLM_MAX_TOKENS_LIMIT", "77")
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, GatewaySettings, ("port", "max_tokens_limit"))
    settings = settings_from_args(parser.parse_args(["--port", "9100"]), GatewaySettings)
    assert settings.port == 9100
    assert settings.max_tokens_limit == 77


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIRITLM_MAX_BODY_BYTES", "-1")
    with pytest.raises(ValueError, match="max_body_bytes"):
        GatewaySettings()


# ------------------------------------------------------------------- `up`: flags to children


def test_up_routes_each_flag_to_its_child() -> None:
    args = parse_args(
        ["up", "--max-model-len", "1024", "--health-interval", "0.5", "--max-streams", "4",
         "--port", "9000", "--dtype=float32"]
    )  # fmt: skip
    flags = route_flags(args)
    assert flags.vllm == ["--max-model-len", "1024", "--dtype=float32"]
    assert flags.gateway_env == {"SPIRITLM_HEALTH_INTERVAL": "0.5"}  # --port: a gateway flag
    assert flags.speech_worker == ["--max-streams", "4"]


def test_up_gives_settings_both_processes_have_to_both() -> None:
    args = parse_args(["up", "--max-audio-seconds", "30", "--device", "cpu", "--cpu-cores", "1"])
    flags = route_flags(args)
    assert flags.gateway_env["SPIRITLM_MAX_AUDIO_SECONDS"] == "30"
    assert flags.speech_worker == ["--device", "cpu", "--max-audio-seconds", "30"]


def test_up_refuses_a_flag_of_no_child(capsys: pytest.CaptureFixture[str]) -> None:
    """Before anything starts: exit status 2 and one line that names the flag."""
    assert main(["up", "--max-model-len", "64", "--bogus-flag", "1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "unknown flag --bogus-flag" in lines[0], lines


def test_max_chunk_units_follows_chunk_units_and_is_never_below_it() -> None:
    from service.speech_worker.settings import SpeechWorkerSettings

    assert SpeechWorkerSettings().max_chunk_units == 100
    assert SpeechWorkerSettings(chunk_units=50).max_chunk_units == 200
    assert SpeechWorkerSettings(max_chunk_units=30).max_chunk_units == 30
    with pytest.raises(ValueError, match="max_chunk_units"):
        SpeechWorkerSettings(chunk_units=50, max_chunk_units=30)
