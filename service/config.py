"""Service settings: one pydantic-settings model read from env vars (SPIRITLM_*) and CLI flags.

Every field `foo_bar` is settable as env var `SPIRITLM_FOO_BAR` and as CLI flag `--foo-bar`; a flag
given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.checkpoints.layout import BASE, VARIANTS

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
        description="HuBERT units before the streaming vocoder emits its first chunk.",
    )
    chunk_units: int = Field(
        default=25, ge=1, description="HuBERT units per later streaming chunk."
    )


def resolve_device(name: str) -> str:
    """Turn 'auto' into 'cuda' when a GPU is visible, else 'cpu'."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    fields: tuple[str, ...],
    model_cls: type[BaseSettings] = Settings,
) -> None:
    """Add `--field-name` flags for the given settings fields (defaults stay with the model)."""
    for name in fields:
        info = model_cls.model_fields[name]
        flag = "--" + name.replace("_", "-")
        extra: dict[str, Any] = {}
        if name == "model":
            extra["choices"] = list(VARIANTS)
        parser.add_argument(flag, dest=name, default=None, help=info.description, **extra)


def settings_from_args(args: argparse.Namespace, model_cls: type[BaseSettings] = Settings) -> Any:
    """Settings from the environment, overridden by the flags that were actually given."""
    given = {
        name: value
        for name, value in vars(args).items()
        if name in model_cls.model_fields and value is not None
    }
    return model_cls(**given)
