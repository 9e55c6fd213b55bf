#!/usr/bin/env bash
# Installs the pinned deployment tools the tests in tests/deploy/ use — helm (renders and lints
# charts/fieldgate) and kustomize (builds k3s/) — as Go modules, with `go install` into a cache
# directory (default ~/.cache/fieldgate/bin; FIELDGATE_TOOLS_DIR overrides). A tool whose pinned
# version is already there is not built again. Prints where the binaries are; the tests find
# them there (or through FIELDGATE_HELM / FIELDGATE_KUSTOMIZE).
# Usage: bash scripts/deploy_tools.sh
set -euo pipefail
HELM_VERSION=v4.3.2
KUSTOMIZE_VERSION=v5.8.0
BIN=${FIELDGATE_TOOLS_DIR:-$HOME/.cache/fieldgate/bin}
mkdir -p "$BIN"

if ! command -v go >/dev/null 2>&1; then
  echo "deploy_tools: go is not installed (needed to build helm $HELM_VERSION and kustomize $KUSTOMIZE_VERSION)" >&2
  exit 1
fi

# The module version a binary was built from (`go version -m`): a helm built with `go install`
# reports only "v4.3" in `helm version` (its release version is set by ldflags in release builds).
module_version() { go version -m "$1" 2>/dev/null | awk '$1 == "mod" {print $3}'; }

if [ -x "$BIN/helm" ] && [ "$(module_version "$BIN/helm")" = "$HELM_VERSION" ]; then
  echo "helm $HELM_VERSION already in $BIN"
else
  echo "building helm $HELM_VERSION into $BIN"
  GOBIN="$BIN" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
fi

if [ -x "$BIN/kustomize" ] && [ "$(module_version "$BIN/kustomize")" = "$KUSTOMIZE_VERSION" ]; then
  echo "kustomize $KUSTOMIZE_VERSION already in $BIN"
else
  echo "building kustomize $KUSTOMIZE_VERSION into $BIN"
  GOBIN="$BIN" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

echo "deploy tools: $BIN/helm ($(module_version "$BIN/helm")), $BIN/kustomize ($(module_version "$BIN/kustomize"))"
