#!/usr/bin/env bash
# The test command behind `make test` (and .ci/run): static checks, then the whole test suite.
# Everything the tests need (Mosquitto, brokers, gRPC servers) is installed by scripts/setup.sh
# and started/stopped by the tests themselves.
set -euo pipefail
VENV=${1:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
echo "== generated protobuf code is current"
python scripts/gen_proto.py --check
echo "== ruff"
ruff check .
echo "== mypy"
mypy fieldgate
echo "== pytest"
pytest -q -p no:cacheprovider --durations=15 "${@:2}"
