#!/usr/bin/env bash
# Install what the checks need into .venv, start the local servers the tests use,
# then run ruff, mypy --strict and the whole pytest suite (last, so its summary
# line closes the run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
bash scripts/services.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict"
.venv/bin/mypy --strict src
echo "== pytest"
.venv/bin/python -m pytest "$@"
