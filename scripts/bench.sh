#!/usr/bin/env bash
# Install triobus with its peers (the benchmark extra) into .venv and print the
# benchmark tables: the core runtime against raw trio, then the bus against
# raw trio, waku and python-cqrs. Extra arguments go to both scripts
# (e.g. --quick, --rounds 9).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[benchmark]'
.venv/bin/python benchmarks/bench_core.py "$@"
.venv/bin/python benchmarks/bench_bus.py "$@"
