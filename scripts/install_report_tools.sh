#!/usr/bin/env bash
# Installs matplotlib for the performance report's plots (scripts/make_performance_report.py)
# in its own venv, .cache/report-venv, never in .venv (the project venv does not carry it).
# Idempotent and quiet: a complete install is left untouched. Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=.cache/report-venv
STAMP="$ROOT/.complete"
LOG=.cache/report-tools-install.log
PY="${PYTHON:-python3}"
want="$(sha256sum scripts/install_report_tools.sh | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "$ROOT/bin/python"
  exit 0
fi
mkdir -p .cache
: > "$LOG"
echo "[report] installing matplotlib into $ROOT" >&2
rm -rf "$ROOT"
if ! { "$PY" -m venv "$ROOT" && "$ROOT/bin/python" -m pip install --quiet \
    --disable-pip-version-check matplotlib==3.11.2 numpy==2.4.6; } >>"$LOG" 2>&1; then
  echo "[report] install failed; last lines of $LOG:" >&2
  tail -n 20 "$LOG" >&2
  exit 1
fi
echo "$want" > "$STAMP"
echo "$ROOT/bin/python"
