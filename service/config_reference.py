"""The configuration reference (docs/configuration.md), generated from the settings models."""

from __future__ import annotations

from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from service.config import Settings
from service.gateway.settings import GatewaySettings
from service.speech_worker.settings import SpeechWorkerSettings

SECTIONS: tuple[tuple[str, type[BaseSettings], str], ...] = (
    ("Common (every process)", Settings, "all sub-commands that load checkpoints"),
    ("Speech worker", SpeechWorkerSettings, "`spiritlm-serve speech-worker`"),
    ("Gateway", GatewaySettings, "`spiritlm-serve gateway` and `spiritlm-serve up`"),
)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "(required)"
    else:
        value = info.default
    if value is None or value == []:
        return "unset"
    return f"`{str(value).replace(str(Path.home()), '~')}`"


def _type(info: FieldInfo) -> str:
    text = str(info.annotation).replace("typing.", "").replace("pathlib.", "")
    for noise in ("<class '", "'>", "Annotated[", ", NoDecode]"):
        text = text.replace(noise, "")
    return text.replace("|", "or")


def render_reference() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings models by `spiritlm-serve config-reference -o "
        "docs/configuration.md`; a test keeps it in sync. Every setting is an environment "
        "variable and a command-line flag with the same name; a flag wins. Lists are "
        "comma-separated. vLLM's own flags are passed through by `spiritlm-serve lm` and `up`.",
    ]
    for title, model, where in SECTIONS:
        common = () if model is Settings else Settings.model_fields
        own = [name for name in model.model_fields if name not in common]
        lines += ["", f"## {title}", "", f"Used by {where}.", ""]
        lines += ["| Env var | Flag | Type | Default | Meaning |", "|---|---|---|---|---|"]
        for name in own:
            info = model.model_fields[name]
            flag = "--" + name.replace("_", "-")
            description = (info.description or "").replace("|", "/")
            lines.append(
                f"| `SPIRITLM_{name.upper()}` | `{flag}` | {_type(info)} | {_default(info)} "
                f"| {description} |"
            )
    return "\n".join(lines) + "\n"
