#!/usr/bin/env bash
# Install asynchub with its test extra into ./.venv, then run the linters, the type checker and
# the whole test suite. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k manifest`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict asynchub benchmarks"
.venv/bin/mypy asynchub
.venv/bin/mypy --strict benchmarks
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
