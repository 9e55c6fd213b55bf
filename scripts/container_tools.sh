#!/usr/bin/env bash
# Builds fieldgate's container image with podman on a machine with no container registry and no
# Docker engine (docs/operations/containers.md), for the tests in tests/containers/:
#   1. Debian's podman, buildah, mmdebstrap, runc & co, installed with apt-get when missing;
#   2. a containers.conf of fieldgate's own (runc, cgroupfs, rlimits this kind of host can set)
#      in $CACHE/containers/containers.conf: run podman with CONTAINERS_CONF pointing at it;
#   3. the base image, made from Debian packages with mmdebstrap (python3 on the machine's own
#      Debian release, from the apt sources the machine already uses) — once: the tarball is
#      cached in $CACHE/images under a key of what went into it, and imported into podman's
#      store as localhost/debian-python:<release>-<key>;
#   4. localhost/fieldgate:<version>-<source hash> (also tagged <version>) from the unchanged
#      Dockerfile (PYTHON_IMAGE = that base), built only when no image of that source hash is
#      in the store: the hash covers the build context's files, the Dockerfile and the base.
# A warm run (all cached) only checks and hashes: a few seconds. $CACHE is ~/.cache/fieldgate
# (FIELDGATE_CACHE_DIR overrides), the jars' and the deploy tools' cache.
#
# Usage: bash scripts/container_tools.sh [--no-install]
#   --no-install   do not install Debian packages (the tests' fixture runs it this way)
# Exit status: 0 = the image is there; 3 = this machine cannot run containers (the reason is
# printed; the container tests skip with it); anything else = a failure to look at.
# Prints the image's name last, as `image: <name>`.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${FIELDGATE_CACHE_DIR:-$HOME/.cache/fieldgate}
IMAGES_DIR=$CACHE/images
CONF=$CACHE/containers/containers.conf
INSTALL=1
for arg in "$@"; do
  case $arg in
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "container_tools: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

cannot_run() { echo "container_tools: this machine cannot run containers: $*" >&2; exit 3; }
step() { echo "== containers: $*"; }
SECONDS=0

# ---- 1. the tools ---------------------------------------------------------------------------
# runc, not crun: crun refuses hosts with hybrid cgroups ("cgroups in hybrid mode not
# supported"). golang-github-containers-common: the default policy.json and registries.conf.
PACKAGES=(podman buildah mmdebstrap runc uidmap fuse-overlayfs netavark aardvark-dns conmon
          golang-github-containers-common catatonit)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || cannot_run "podman is not installed and this is not a Debian machine (no apt-get)"
  [ "$INSTALL" = 1 ] || cannot_run "missing Debian packages ${missing[*]} (bash scripts/container_tools.sh installs them)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    sudo -n true 2>/dev/null || cannot_run "missing Debian packages ${missing[*]} and no root to install them"
    SUDO="sudo -n"
  fi
  step "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Rootful podman: the base image is made with mmdebstrap as root, and the tests run the
# containers as root's podman (the containers themselves run as UID 10001).
[ "$(id -u)" = 0 ] || cannot_run "podman runs as root here (rootless podman needs subordinate IDs set up); run as root"

# ---- 2. containers.conf -----------------------------------------------------------------------
# The default rlimits cannot be set on this kind of host ("setrlimit RLIMIT_NOFILE: Operation
# not permitted"), so give every container explicit ones; runc (see above); cgroupfs and a
# file events log: no systemd is needed.
mkdir -p "$(dirname "$CONF")" "$IMAGES_DIR"
cat >"$CONF.tmp" <<'EOF'
# Written by fieldgate's scripts/container_tools.sh: podman's settings for fieldgate's tests
# (CONTAINERS_CONF=<this file>). Rewritten on every run.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
EOF
mv "$CONF.tmp" "$CONF"
export CONTAINERS_CONF=$CONF
podman info >/dev/null 2>"$CACHE/containers/podman-info.err" \
  || cannot_run "podman info failed: $(tail -n 3 "$CACHE/containers/podman-info.err")"

# ---- 3. the base image ---------------------------------------------------------------------------
RELEASE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$RELEASE" ] || cannot_run "no VERSION_CODENAME in /etc/os-release (not a Debian release mmdebstrap can make)"
ARCH=$(dpkg --print-architecture)
INCLUDE=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
# The machine's own Debian apt sources (one-line and deb822 files under /etc/apt), as one-line
# entries for mmdebstrap: those of this release's suites (<release>, <release>-updates,
# <release>-security ...), whatever mirror the machine is set up with.
mapfile -t SOURCES < <(python3 - "$RELEASE" <<'EOF'
import glob, sys
release = sys.argv[1]
files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
entries = []  # (options, uri, suite, components)
for path in files:
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        options = ""
        if words and words[0].startswith("["):
            opt = []
            while words:
                w = words.pop(0)
                opt.append(w)
                if w.endswith("]"):
                    break
            options = " ".join(opt)[1:-1].strip()
        if len(words) >= 3:
            entries.append((options, words[0], words[1], " ".join(words[2:])))
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    text = open(path, encoding="utf-8").read()
    for block in text.split("\n\n"):
        fields = {}
        key = None
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
            continue
        # Signed-By as a keyring path (an inline key block cannot go on a one-line entry).
        signed_by = fields.get("signed-by", "")
        options = f"signed-by={signed_by}" if signed_by and "BEGIN PGP" not in signed_by else ""
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                entries.append((options, uri, suite, fields.get("components", "main")))
for options, uri, suite, components in entries:
    if suite == release or suite.startswith(release + "-") or suite.startswith(release + "/"):
        print(f"deb [{options}] {uri} {suite} {components}" if options else f"deb {uri} {suite} {components}")
EOF
)
[ ${#SOURCES[@]} -gt 0 ] || cannot_run "no apt source of Debian $RELEASE under /etc/apt to make the base image from"
# Proxy settings of the machine's apt, if any, apply to mmdebstrap's apt too.
mapfile -t APT_PROXY < <(apt-config dump 2>/dev/null | grep -E '^Acquire::(http|https)::Proxy ' || true)
KEY=$(printf '%s\n' "variant=minbase" "include=$INCLUDE" "release=$RELEASE" "arch=$ARCH" "${SOURCES[@]}" \
        | sha256sum | cut -c1-12)
BASE_TAR=$IMAGES_DIR/debian-python-$RELEASE-$ARCH-$KEY.tar
BASE_IMAGE=localhost/debian-python:$RELEASE-$KEY
if podman image exists "$BASE_IMAGE"; then
  step "base image $BASE_IMAGE already in podman's store"
else
  if [ -s "$BASE_TAR" ]; then
    step "base tarball cached: $BASE_TAR"
  else
    step "making the base image with mmdebstrap (Debian $RELEASE: $INCLUDE) from:"
    printf '     %s\n' "${SOURCES[@]}"
    aptopts=()
    for p in "${APT_PROXY[@]}"; do aptopts+=(--aptopt="$p"); done
    rm -f "$BASE_TAR.tmp"
    mmdebstrap --quiet --variant=minbase --include="$INCLUDE" --format=tar "${aptopts[@]}" \
      "$RELEASE" "$BASE_TAR.tmp" "${SOURCES[@]}"
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    # Older tarballs of other keys are of no more use.
    find "$IMAGES_DIR" -maxdepth 1 -name 'debian-python-*.tar' ! -name "$(basename "$BASE_TAR")" -delete
  fi
  step "importing it as $BASE_IMAGE"
  podman import --quiet --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
    "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi
# Can this machine run a container at all? (cgroups, namespaces, seccomp, rlimits)
if ! probe=$(podman run --rm --pull=never --network=host "$BASE_IMAGE" python3 -c 'print("ok")' 2>&1); then
  cannot_run "podman run failed: $(printf '%s' "$probe" | tail -n 3)"
fi

# ---- 4. the fieldgate image -------------------------------------------------------------------
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
# What the image is made of: the files the Dockerfile copies (less what .dockerignore keeps
# out of the build context), the Dockerfile and the base image.
SOURCE_HASH=$(
  {
    sha256sum Dockerfile
    echo "$BASE_IMAGE"   # its tag is the key of the tarball it was imported from
    find -L pyproject.toml README.md fieldgate cloud edge firmware-sims -type f \
      ! -path '*/__pycache__/*' ! -name '*.py[cod]' ! -path '*.egg-info/*' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-12
)
# Two tags: <version>-<source hash> names exactly this build (what the tests run: another
# checkout on the same machine building its own sources cannot swap it under them), and
# <version> the latest build on this machine (what docs/operations/containers.md runs).
IMAGE=localhost/fieldgate:$VERSION-$SOURCE_HASH
LATEST=localhost/fieldgate:$VERSION
if podman image exists "$IMAGE"; then
  step "$IMAGE is current (its sources are unchanged)"
else
  step "building $IMAGE from the Dockerfile"
  # --network host and the machine's CA bundle: pip in the builder stage fetches the
  # dependencies' wheels from PyPI as the machine itself reaches it. --layers=false: nothing
  # but the image stays behind (a changed source rebuilds everything after the COPY anyway).
  podman build --quiet --layers=false --network host \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --build-arg PYTHON_IMAGE="$BASE_IMAGE" --label io.fieldgate.source-hash="$SOURCE_HASH" \
    -t "$IMAGE" -f Dockerfile . >/dev/null
fi
podman tag "$IMAGE" "$LATEST"
# Older builds: the three newest stay (other checkouts on this machine may be testing them);
# the others lose their tag, and fieldgate builds left without any tag are removed (unless a
# container still uses one: rmi refuses it).
podman images --noheading --sort created --format '{{.Repository}}:{{.Tag}}' localhost/fieldgate \
  | { grep -E -- '-[0-9a-f]{12}$' || true; } | { grep -vxF "$IMAGE" || true; } | tail -n +3 \
  | while read -r old; do podman untag "$old" "$old" >/dev/null 2>&1 || true; done
for old in $(podman images --quiet --filter dangling=true --filter label=io.fieldgate.source-hash); do
  podman rmi "$old" >/dev/null 2>&1 || true
done
step "ready in ${SECONDS}s; CONTAINERS_CONF=$CONF"
echo "image: $IMAGE"
