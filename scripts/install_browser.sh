#!/usr/bin/env bash
# Installs what tests/test_browser.py drives: Debian's chromium (apt-get) and the playwright
# Python package in its own venv, .cache/browser-venv (never in .venv). Playwright's own browser
# download is never run: the test points it at /usr/bin/chromium. Idempotent and quiet: a
# complete install is left untouched. Exits non-zero when something cannot be installed; the
# browser test then skips and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=.cache/browser-venv
STAMP="$ROOT/.complete"
LOG=.cache/browser-install.log
PY="${PYTHON:-python3}"
PLAYWRIGHT_VERSION=1.65.2
want="$(sha256sum scripts/install_browser.sh | cut -c1-16)"
mkdir -p .cache
: > "$LOG"

fail() {
  echo "[browser] install failed: $1; last lines of $LOG:" >&2
  tail -n 20 "$LOG" >&2
  exit 1
}

if ! [ -x /usr/bin/chromium ]; then
  echo "[browser] installing Debian's chromium with apt-get (a minute or two)" >&2
  command -v apt-get >/dev/null || fail "no apt-get on this machine"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  $SUDO apt-get update >>"$LOG" 2>&1 || fail "apt-get update"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium \
    >>"$LOG" 2>&1 || fail "apt-get install chromium"
fi
[ -x /usr/bin/chromium ] || fail "/usr/bin/chromium is missing after the install"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "[browser] installing playwright $PLAYWRIGHT_VERSION into $ROOT" >&2
rm -rf "$ROOT"
"$PY" -m venv "$ROOT" >>"$LOG" 2>&1 || fail "python venv"
"$ROOT/bin/python" -m pip install --quiet --disable-pip-version-check \
  "playwright==$PLAYWRIGHT_VERSION" >>"$LOG" 2>&1 || fail "pip install playwright"
echo "$want" > "$STAMP"
