#!/usr/bin/env bash
# Builds the Debian package of the edge agent, fieldgate-edge_<version>-1_<arch>.deb
# (`make deb`; docs/operations/gateways.md), with dpkg-deb over a virtualenv made at its final
# path:
#   1. in a private mount namespace (unshare) where a staging tree is bound over /opt,
#      `python3 -m venv /opt/fieldgate/<version>` with this machine's Debian python3 and pip
#      installs this checkout (non-editable) and its dependencies (wheels from PyPI) into it —
#      the venv is made where it will run, so no shebang or path is rewritten afterwards; pip
#      itself is then removed from it;
#   2. the unit, the user (sysusers.d), /etc/fieldgate/edge.yaml (a conffile), /usr/bin/fieldgate
#      and the docs are added from packaging/; dpkg-shlibdeps works out the libraries the
#      venv's compiled modules need, and the package Depends on this Debian python3's minor
#      version (the venv runs on it);
#   3. dpkg-deb --root-owner-group builds the package.
# The package is rebuilt only when what goes into it changed (a hash of the sources, packaging/
# and this script, kept beside the .deb): a warm run takes about a second. The venv with the
# dependencies alone is cached in $CACHE/gateway (keyed on the dependency list, the Python and
# the version's path), so a changed checkout costs a pip install of fieldgate itself, no more.
# gzip -1, not xz: xz over ~150 MB of venv takes minutes on a small machine.
#
# Usage: bash scripts/build_deb.sh [--out DIR] [--force]
#   --out DIR   where the .deb goes (default dist/)
#   --force     rebuild even if the sources are unchanged
# Prints the package's path last, as `deb: <path>`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=dist
FORCE=0
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_deb: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
step() { echo "== deb: $*"; }
die() { echo "build_deb: $*" >&2; exit 1; }
SECONDS=0

for tool in dpkg-deb dpkg-shlibdeps unshare; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (Debian packages dpkg-dev, util-linux)"
done
PYTHON=/usr/bin/python3
dpkg -S "$PYTHON" >/dev/null 2>&1 || die "$PYTHON is not Debian's python3 (the package runs on the target's)"
"$PYTHON" -c 'import ensurepip' 2>/dev/null || die "python3 -m venv needs Debian's python3-venv"

VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
DEBVERSION=$VERSION-1
ARCH=$(dpkg --print-architecture)
PYMINOR=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PYNEXT=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
DEB=$OUT/fieldgate-edge_${DEBVERSION}_$ARCH.deb

SOURCE_HASH=$(
  {
    echo "$VERSION $ARCH $("$PYTHON" --version)"
    find -L pyproject.toml README.md fieldgate cloud edge firmware-sims packaging/deb packaging/systemd \
      packaging/edge.yaml scripts/build_deb.sh \
      docs/operations/gateways.md -type f ! -path '*/__pycache__/*' ! -name '*.py[cod]' ! -path '*.egg-info/*' \
      -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)
if [ "$FORCE" = 0 ] && [ -s "$DEB" ] && [ "$(cat "$DEB.source-hash" 2>/dev/null)" = "$SOURCE_HASH" ]; then
  step "$DEB is current (its sources are unchanged)"
  echo "deb: $ROOT/$DEB"
  exit 0
fi

mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fieldgate-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 143' TERM INT
STAGE=$WORK/root
SLOT=/opt/fieldgate/$VERSION
mkdir -p "$STAGE/opt/fieldgate"
CACHE=${FIELDGATE_CACHE_DIR:-$HOME/.cache/fieldgate}/gateway
DEPS_KEY=$(
  {
    echo "$SLOT $ARCH $("$PYTHON" --version) $(dpkg-query -W -f='${Version}' python3 2>/dev/null)"
    "$PYTHON" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print(p["project"]["dependencies"], p["build-system"]["requires"])'
    sed -n '/^# ---- 1\./,/^# ---- 2\./p' scripts/build_deb.sh
  } | sha256sum | cut -c1-16
)
DEPS_TAR=$CACHE/edge-venv-$ARCH-$DEPS_KEY.tar

# ---- 1. the venv, at its final path -------------------------------------------------------------
step "venv $SLOT (python $PYMINOR) with this checkout and its dependencies"
unshare_opts=(--mount --propagation private)
[ "$(id -u)" = 0 ] || unshare_opts+=(--map-root-user)
# Built in a copy of the sources: pip's build writes build/ and *.egg-info beside them.
mkdir -p "$WORK/src"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.egg-info' --exclude=.venv -cf - \
  pyproject.toml README.md fieldgate cloud edge firmware-sims | tar -C "$WORK/src" -xf -
if [ -s "$DEPS_TAR" ]; then
  step "the dependencies' venv: cached $(basename "$DEPS_TAR")"
  mkdir -p "$STAGE$SLOT"
  tar -C "$STAGE$SLOT" -xf "$DEPS_TAR"
fi
mkdir -p "$CACHE"
unshare "${unshare_opts[@]}" env STAGE="$STAGE" SLOT="$SLOT" SRC="$WORK/src" PYTHON="$PYTHON" DEPS_TAR="$DEPS_TAR" \
    BUILD_REQUIRES="$("$PYTHON" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])')" bash -euo pipefail -c '
  # An overlay over /opt: what is there stays visible (a pip find-links directory, say), what
  # is written lands in the staging tree. A plain bind mount where overlays are not allowed.
  mkdir -p "$STAGE.work"
  mount -t overlay overlay -o "lowerdir=/opt,upperdir=$STAGE/opt,workdir=$STAGE.work" /opt 2>/dev/null \
    || mount --bind "$STAGE/opt" /opt
  pip=("$SLOT/bin/python" -m pip --disable-pip-version-check)
  if [ ! -x "$SLOT/bin/python" ]; then
    # Not cached: the venv with the dependencies (and the build backend fieldgate needs), compiled, kept.
    "$PYTHON" -m venv "$SLOT"
    "${pip[@]}" install --quiet --no-warn-script-location $BUILD_REQUIRES
    "${pip[@]}" install --quiet --no-warn-script-location "$SRC"
    "${pip[@]}" uninstall --quiet --yes fieldgate
    "$SLOT/bin/python" -m compileall -q -j 0 "$SLOT/lib" >/dev/null
    tar -C "$SLOT" -cf "$DEPS_TAR.tmp.$$" . && mv "$DEPS_TAR.tmp.$$" "$DEPS_TAR"
    find "$(dirname "$DEPS_TAR")" -maxdepth 1 -name "edge-venv-*.tar" ! -name "$(basename "$DEPS_TAR")" -delete
  fi
  "${pip[@]}" install --quiet --no-warn-script-location --no-deps --no-build-isolation "$SRC"
  "${pip[@]}" check >/dev/null
  mkdir -p "$SLOT/share/fieldgate"
  "$SLOT/bin/python" -m pip list --disable-pip-version-check --format=freeze --exclude pip --exclude setuptools \
    > "$SLOT/share/fieldgate/versions.txt"
  "$SLOT/bin/python" -m pip uninstall --quiet --disable-pip-version-check --yes pip setuptools
  rm -f "$SLOT"/bin/pip* "$SLOT"/bin/activate* "$SLOT"/bin/Activate.ps1
  # The slot runs from a read-only /opt: compile what pip did not (sources of the project itself).
  "$SLOT/bin/python" -m compileall -q -j 0 "$SLOT/lib" >/dev/null
  "$SLOT/bin/fieldgate" --help >/dev/null
'
rm -rf "$STAGE.work"
grep -q "^fieldgate==$VERSION\$" "$STAGE$SLOT/share/fieldgate/versions.txt" || die "fieldgate $VERSION is not in the venv"

# ---- 2. the rest of the package -------------------------------------------------------------------
step "unit, user, configuration, docs"
install -D -m 0644 packaging/systemd/fieldgate-edge.service "$STAGE/lib/systemd/system/fieldgate-edge.service"
install -D -m 0644 packaging/systemd/fieldgate.sysusers "$STAGE/usr/lib/sysusers.d/fieldgate.conf"
install -D -m 0640 packaging/edge.yaml "$STAGE/etc/fieldgate/edge.yaml"
install -d "$STAGE/usr/bin"
ln -s "/opt/fieldgate/current/bin/fieldgate" "$STAGE/usr/bin/fieldgate"
install -D -m 0644 docs/operations/gateways.md "$STAGE/usr/share/doc/fieldgate-edge/gateways.md"
{
  echo "fieldgate-edge: the edge agent of fieldgate, licensed under the Apache License 2.0"
  echo "(/usr/share/common-licenses/Apache-2.0). The Python packages in $SLOT come with their"
  echo "own licences, in their *.dist-info directories; their versions: $SLOT/share/fieldgate/versions.txt."
} > "$WORK/copyright"
install -D -m 0644 "$WORK/copyright" "$STAGE/usr/share/doc/fieldgate-edge/copyright"

# The libraries the compiled modules need, as Debian dependencies (dpkg-shlibdeps wants a
# debian/control to read; libraries the wheels bring themselves are found beside them).
step "dpkg-shlibdeps over the venv's compiled modules"
mkdir -p "$WORK/shlibs/debian"
printf 'Source: fieldgate-edge\n\nPackage: fieldgate-edge\nArchitecture: any\n' > "$WORK/shlibs/debian/control"
mapfile -t ELVES < <(find "$STAGE$SLOT" -type f \( -name '*.so' -o -name '*.so.*' \) | sort)
libdirs=()
while IFS= read -r dir; do libdirs+=("-l$dir"); done < <(printf '%s\n' "${ELVES[@]}" | xargs -n1 dirname | sort -u)
SHLIBS=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O --ignore-missing-info --warnings=0 "${libdirs[@]}" "${ELVES[@]}" 2>"$WORK/shlibdeps.err" \
          | sed -n 's/^shlibs:Depends=//p') || { cat "$WORK/shlibdeps.err" >&2; die "dpkg-shlibdeps failed"; }
DEPENDS="python3 (>= $PYMINOR~), python3 (<< $PYNEXT), systemd"
[ -n "$SHLIBS" ] && DEPENDS="$DEPENDS, $SHLIBS"

mkdir -p "$STAGE/DEBIAN"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s|@DEBVERSION@|$DEBVERSION|; s|@VERSION@|$VERSION|g; s|@ARCH@|$ARCH|; s|@SIZE@|$SIZE|; s|@DEPENDS@|$DEPENDS|" \
  packaging/deb/control.in > "$STAGE/DEBIAN/control"
for script in postinst prerm postrm; do
  sed -e "s|@VERSION@|$VERSION|g" "packaging/deb/$script" > "$STAGE/DEBIAN/$script"
  chmod 0755 "$STAGE/DEBIAN/$script"
done
echo /etc/fieldgate/edge.yaml > "$STAGE/DEBIAN/conffiles"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
  | xargs -0 md5sum > DEBIAN/md5sums)

# ---- 3. the package ------------------------------------------------------------------------------------
step "dpkg-deb"
dpkg-deb --root-owner-group -Zgzip -z1 --build "$STAGE" "$DEB.tmp" >/dev/null
mv "$DEB.tmp" "$DEB"
echo "$SOURCE_HASH" > "$DEB.source-hash"
step "$(basename "$DEB"): $(du -h "$DEB" | cut -f1), Depends: $DEPENDS; built in ${SECONDS}s"
echo "deb: $ROOT/$DEB"
