#!/usr/bin/env bash
# The test command behind `make test` (and .ci/run): static checks, then the whole test suite.
# Everything the tests need is installed by scripts/setup.sh (Debian packages, the virtualenv)
# and here (the Kafka, ZooKeeper and Cassandra jars, through mvn, cached in
# ~/.cache/fieldgate/jars; helm and kustomize; podman and fieldgate's container image); the
# tests start and stop every server and container they use themselves.
# Extra arguments go to both pytest runs (e.g. `bash scripts/test.sh .venv -x`).
set -euo pipefail
VENV=${1:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
echo "== generated protobuf code is current"
python scripts/gen_proto.py --check
echo "== ruff (lint, and the formatting)"
ruff check .
ruff format --check .
echo "== import boundaries (import-linter: pyproject's [tool.importlinter] contracts)"
lint-imports --no-cache --no-logo
echo "== mypy (the package strictly; tests, hil and benchmarks with unannotated test functions allowed)"
mypy fieldgate tests hil benchmarks
echo "== Kafka, ZooKeeper and Cassandra jars (Maven Central through mvn; cached)"
python -m fieldgate.devservers fetch
echo "== deploy tools: helm and kustomize (Go modules, pinned; cached in ~/.cache/fieldgate/bin)"
bash scripts/deploy_tools.sh
echo "== containers: podman (Debian), the base image (mmdebstrap; cached in ~/.cache/fieldgate/images), fieldgate's image from the Dockerfile (rebuilt when its sources change)"
# Exit status 3: this machine cannot run containers (said why); tests/containers then skip.
containers=0
bash scripts/container_tools.sh || containers=$?
if [ "$containers" -eq 3 ]; then
  echo "   the container tests will be skipped"
elif [ "$containers" -ne 0 ]; then
  exit "$containers"
fi
echo "== gateways: mmdebstrap, systemd-nspawn, qemu (Debian), the gateway base root filesystem (cached in ~/.cache/fieldgate/images)"
# Exit status 3: this machine cannot make it (said why); tests/gateway then skip.
gateway=0
bash scripts/gateway_base.sh || gateway=$?
if [ "$gateway" -eq 3 ]; then
  echo "   the gateway tests will be skipped"
elif [ "$gateway" -ne 0 ]; then
  exit "$gateway"
fi
export CONTAINERS_CONF="${FIELDGATE_CACHE_DIR:-$HOME/.cache/fieldgate}/containers/containers.conf"
echo "== pytest: unit, integration, hil (sims), end to end on the embedded backends"
pytest -q -p no:cacheprovider --durations=15 -m "not distributed" "${@:2}"
echo "== pytest: distributed — real Kafka, ZooKeeper and Cassandra (and the end-to-end tests on them; the image run with podman; the gateway package and image booted)"
# A second run, so the JVMs never share the two cores with the timing-sensitive tests above.
status=0
FIELDGATE_DISTRIBUTED=1 pytest -q -p no:cacheprovider --durations=15 -m distributed "${@:2}" || status=$?
# 5 = nothing selected (arguments that name only non-distributed tests): not a failure.
if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then exit "$status"; fi
