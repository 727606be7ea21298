#!/usr/bin/env bash
# The test command: installs everything the tests need (project venv, the slow-tokenizer
# reference, the deployment validators, Chromium for the browser test), then lint + tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
SPIRITLM_TOKENIZER_REFERENCE_PYTHON="$(./scripts/make_tokenizer_reference_venv.sh | tail -n 1)"
export SPIRITLM_TOKENIZER_REFERENCE_PYTHON
./scripts/install_validators.sh
if [ -x scripts/install_browser.sh ]; then
  ./scripts/install_browser.sh
fi
.venv/bin/ruff check service clients tests scripts
exec .venv/bin/python -m pytest -q -ra "$@"
