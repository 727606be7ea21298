#!/usr/bin/env bash
# Installs schemathesis (API fuzzing from the OpenAPI schema, used by tests/test_hostile.py) in
# its own venv, .cache/schemathesis-venv, never in .venv: the project venv's pins are vLLM's.
# (pip's resolver finds no conflict between schemathesis 4.32.5 and .venv, but the house rule is
# that .venv holds only what scripts/bootstrap.sh puts there.) Idempotent and quiet: a complete
# install is left untouched. Prints the path of the `schemathesis` executable on success.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=.cache/schemathesis-venv
STAMP="$ROOT/.complete"
LOG=.cache/schemathesis-install.log
PY="${PYTHON:-python3}"
VERSION=4.32.5
want="$(sha256sum scripts/install_schemathesis.sh | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "$ROOT/bin/schemathesis"
  exit 0
fi
mkdir -p .cache
: > "$LOG"
echo "[schemathesis] installing schemathesis $VERSION into $ROOT" >&2
rm -rf "$ROOT"
if ! { "$PY" -m venv "$ROOT" && "$ROOT/bin/python" -m pip install --quiet \
    --disable-pip-version-check "schemathesis==$VERSION"; } >>"$LOG" 2>&1; then
  echo "[schemathesis] install failed; last lines of $LOG:" >&2
  tail -n 20 "$LOG" >&2
  exit 1
fi
"$ROOT/bin/schemathesis" --version >>"$LOG" 2>&1
echo "$want" > "$STAMP"
echo "$ROOT/bin/schemathesis"
