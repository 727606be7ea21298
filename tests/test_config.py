"""Settings: env vars and flags with the same names, lists, and the generated reference."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.config import add_settings_arguments, settings_from_args
from service.config_reference import render_reference
from service.gateway.settings import GatewaySettings

REPO = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_up_to_date() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render_reference(), (
        "run: spiritlm-serve config-reference -o docs/configuration.md"
    )


def test_every_gateway_setting_is_documented() -> None:
    text = render_reference()
    for name in GatewaySettings.model_fields:
        assert f"`SPIRITLM_{name.upper()}`" in text
        assert f"`--{name.replace('_', '-')}`" in text


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
    add_settings_arguments(parser, ("port", "max_tokens_limit"), GatewaySettings)
    settings = settings_from_args(parser.parse_args(["--port", "9100"]), GatewaySettings)
    assert settings.port == 9100
    assert settings.max_tokens_limit == 77


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIRITLM_MAX_BODY_BYTES", "-1")
    with pytest.raises(ValueError, match="max_body_bytes"):
        GatewaySettings()
