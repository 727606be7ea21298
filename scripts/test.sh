#!/usr/bin/env bash
# The test command: installs what it needs (project venv, tokenizer reference), then lint + tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
if [ -x scripts/make_tokenizer_reference_venv.sh ]; then
  ./scripts/make_tokenizer_reference_venv.sh
fi
.venv/bin/ruff check service clients tests
exec .venv/bin/python -m pytest -q -ra "$@"
