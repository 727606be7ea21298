#!/usr/bin/env bash
# The run command: installs the project venv if needed, then serves the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/spiritlm-serve up "$@"
