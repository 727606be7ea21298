#!/usr/bin/env bash
# Creates the small virtual environment whose slow, sentencepiece-based LlamaTokenizer
# (transformers 4.x, legacy behaviour) is the reference for tests/test_lm_tokenizer.py.
# transformers 5 no longer has that class, so it cannot live in the project's .venv.
# No torch is needed for tokenizers. Prints the interpreter path, to be exported as
# SPIRITLM_TOKENIZER_REFERENCE_PYTHON. Idempotent.
#
# usage: scripts/make_tokenizer_reference_venv.sh [VENV_DIR]   (default .cache/tokenizer-reference)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.cache/tokenizer-reference}"
PY="${PYTHON:-python3}"
# Same sentencepiece as the project (our encoder calls it too), so only the transformers-side
# logic is being compared.
SP_VERSION=""
if [ -x .venv/bin/python ]; then
  SP_VERSION="$(.venv/bin/python -c 'import sentencepiece; print(sentencepiece.__version__)' 2>/dev/null || true)"
fi
SP_SPEC="sentencepiece${SP_VERSION:+==$SP_VERSION}"
want="transformers==4.46.3 $SP_SPEC protobuf"
STAMP="$VENV/.reference-complete"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  echo "$(cd "$VENV" && pwd)/bin/python"
  exit 0
fi
echo "[tokenizer-reference] creating $VENV ($want)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q --disable-pip-version-check $want >&2
echo "$want" > "$STAMP"
echo "$(cd "$VENV" && pwd)/bin/python"
