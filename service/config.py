"""Service settings: one pydantic-settings model read from env vars (SPIRITLM_*) and CLI flags.

Every field `foo_bar` is settable as env var `SPIRITLM_FOO_BAR` and as CLI flag `--foo-bar` (a few
flags are spelled otherwise: `flag_names`); a flag given on the command line wins over the
environment. docs/configuration.md lists them, generated from the commands' parsers.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.checkpoints.layout import BASE

ModelName = Literal["spirit-lm-base-7b", "spirit-lm-expressive-7b"]


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "spiritlm-serve"


class Settings(BaseSettings):
    """Settings shared by every spiritlm-serve process."""

    model_config = SettingsConfigDict(env_prefix="SPIRITLM_", extra="ignore")

    checkpoints_dir: Path | None = Field(
        default=None,
        description="Official-layout checkpoint root; unset = embedded tiny default.",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Where the embedded default checkpoints are generated (once).",
    )
    model: ModelName = Field(default=BASE, description="Spirit LM variant to serve.")
    device: str = Field(
        default="auto", description="Torch device for speech models: auto|cpu|cuda[:N]."
    )
    cpu_cores: str = Field(
        default="",
        description="CPU cores this process runs on, e.g. '3' or '2-3,6' (empty = every core it "
        "may use); `up` sets it for the speech worker and the gateway when vLLM runs on the CPU.",
    )
    max_audio_seconds: float = Field(
        default=600.0, gt=0, description="Longest accepted audio input."
    )
    first_chunk_units: int = Field(
        default=10,
        ge=1,
        description="HuBERT units before the streaming vocoder emits its first chunk (an "
        "incremental stream's first chunk takes the next whole 8 frames: a few more units).",
    )
    chunk_units: int = Field(
        default=25,
        ge=1,
        description="HuBERT units per later streaming chunk (an incremental stream's chunks "
        "release at least this many, in whole blocks of frames: vocoder_streaming).",
    )
    # A SecretStr, so it is never in a repr or a log line. docs/security.md says who sends it
    # (the gateway) and who checks it (the speech worker, vLLM).
    internal_api_key: SecretStr = Field(
        default="",
        validate_default=True,
        description="Credential between the gateway and its workers: the gateway sends it as a "
        "Bearer token; the speech worker and vLLM refuse their API (all but health, readiness "
        "and metrics) without it. Empty = no internal auth; `up` makes one for its children "
        "when none is given.",
    )


def resolve_device(name: str) -> str:
    """Turn 'auto' into 'cuda' when a GPU is visible, else 'cpu'."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# Flags spelled otherwise than `--field-name`, and why:
# - `--checkpoints` is the short form every command has taken from the start.
# - a worker URL per flag, repeated (`--lm-url A --lm-url B`), reads better than one list; the
#   env vars stay comma-separated lists.
_FLAGS: dict[str, tuple[str, ...]] = {
    "checkpoints_dir": ("--checkpoints", "--checkpoints-dir"),
    "lm_urls": ("--lm-url",),
    "speech_urls": ("--speech-url",),
}
_REPEATED = frozenset({"lm_urls", "speech_urls"})


def flag_names(name: str) -> tuple[str, ...]:
    """The command-line spellings of the settings field `name`, the usual one first."""
    return _FLAGS.get(name, ("--" + name.replace("_", "-"),))


def env_name(model_cls: type[BaseSettings], name: str) -> str:
    return f"{model_cls.model_config.get('env_prefix', '')}{name}".upper()


class SettingFlag(argparse.Action):
    """The flag of one settings field; it knows its env var and the field (for the reference).

    Its default is None, "not given", so that the environment and then the model's own default
    decide (`settings_from_args`).
    """

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        *,
        model_cls: type[BaseSettings],
        **kwargs: Any,
    ) -> None:
        self.field: FieldInfo = model_cls.model_fields[dest]
        self.env = env_name(model_cls, dest)
        self.repeated = dest in _REPEATED
        choices = (
            get_args(self.field.annotation)
            if get_origin(self.field.annotation) is Literal
            else None
        )
        description = (self.field.description or "").replace("%", "%%")
        again = " (repeat for more)" if self.repeated else ""
        super().__init__(
            option_strings,
            dest,
            default=None,
            choices=choices,
            help=f"{description}{again} [env {self.env}]",
            **kwargs,
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if self.repeated:
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    model_cls: type[BaseSettings] = Settings,
    fields: Iterable[str] | None = None,
) -> None:
    """A flag for each of the given settings fields (default: every field of the model)."""
    for name in model_cls.model_fields if fields is None else fields:
        parser.add_argument(*flag_names(name), dest=name, action=SettingFlag, model_cls=model_cls)


def settings_from_args(args: argparse.Namespace, model_cls: type[BaseSettings] = Settings) -> Any:
    """Settings from the environment, overridden by the flags that were actually given."""
    given = {
        name: value
        for name, value in vars(args).items()
        if name in model_cls.model_fields and value is not None
    }
    return model_cls(**given)
