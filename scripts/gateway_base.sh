#!/usr/bin/env bash
# The Debian root filesystem that gateway images are made from, and that the package tests
# install fieldgate-edge into (docs/operations/gateways.md):
#   mmdebstrap --variant=minbase of the machine's own Debian release and apt sources
#   (scripts/apt_sources.py: whatever mirror and proxy the machine uses), with systemd as init,
#   D-Bus, udev, networkd/resolved/timesyncd, python3 (the interpreter the package's venv
#   runs on), BlueZ (the BLE adapter), a kernel with its initramfs and systemd-boot's EFI binary
#   (the raw disk image boots with them). Man pages and docs other than copyright files are
#   left out (dpkg path-exclude, kept in the image for later installs too).
# Made once per (release, architecture, package list, sources): the tarball is cached in
# $CACHE/images (the base images of scripts/container_tools.sh live there too). Cold ~4 min
# on 2 cores (amd64); warm: a hash and a file test.
#
# Usage: bash scripts/gateway_base.sh [--arch ARCH] [--no-install]
#   --arch ARCH    a Debian architecture (default: the machine's); a foreign one needs qemu-user
#                  through binfmt_misc (qemu-user-static, binfmt-support: installed when missing)
#   --no-install   do not install Debian packages (mmdebstrap, qemu-user-static)
# Exit status: 0 = the tarball is there; 3 = this machine cannot make it (the reason is printed;
# the gateway tests skip with it); anything else = a failure to look at.
# Also installs (when missing) what building and booting gateways takes: mmdebstrap,
# dpkg-dev, systemd-container, fdisk, dosfstools, mtools, e2fsprogs, qemu-system and OVMF.
# Prints the tarball's path last, as `base: <path>`.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${FIELDGATE_CACHE_DIR:-$HOME/.cache/fieldgate}
IMAGES_DIR=$CACHE/images
ARCH=$(dpkg --print-architecture)
INSTALL=1
while [ $# -gt 0 ]; do
  case $1 in
    --arch) ARCH=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gateway_base: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cannot() { echo "gateway_base: cannot make the gateway base here: $*" >&2; exit 3; }
step() { echo "== gateway base: $*"; }

[ "$(id -u)" = 0 ] || cannot "mmdebstrap's root mode (chroot, device nodes, file owners) needs root"
command -v apt-get >/dev/null 2>&1 || cannot "this is not a Debian machine (no apt-get)"

# What building and booting gateways takes: mmdebstrap; dpkg-dev (dpkg-shlibdeps, for the
# package); systemd-nspawn; sfdisk, mkfs.vfat, mtools, mkfs.ext4 (the raw image); qemu and
# OVMF (the tests boot the raw image).
HOST_ARCH=$(dpkg --print-architecture)
TOOLS=(mmdebstrap dpkg-dev systemd-container fdisk dosfstools mtools e2fsprogs)
case $HOST_ARCH in
  amd64) TOOLS+=(qemu-system-x86 ovmf) ;;
  arm64) TOOLS+=(qemu-system-arm qemu-efi-aarch64) ;;
esac
need=()
for pkg in "${TOOLS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if [ "$ARCH" != "$HOST_ARCH" ]; then
  dpkg-query -W -f='${Status}' qemu-user-static 2>/dev/null | grep -q 'ok installed' || need+=(qemu-user-static binfmt-support)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$INSTALL" = 0 ]; then
    command -v mmdebstrap >/dev/null 2>&1 || cannot "missing Debian packages ${need[*]} (run without --no-install to install them)"
    echo "gateway_base: missing Debian packages ${need[*]} (run without --no-install to install them)" >&2
    need=()
  fi
fi
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$ARCH" != "$HOST_ARCH" ]; then
  # Foreign binaries run through qemu-user registered with binfmt_misc (maintainer scripts run
  # in the chroot). The filesystem is not always mounted on a fresh boot.
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
    || cannot "binfmt_misc cannot be mounted here, so $ARCH binaries cannot run"
  qemu=$(dpkg-query -W -f='${Status}' qemu-user-static 2>/dev/null | grep -q 'ok installed' && echo yes || echo no)
  [ "$qemu" = yes ] || cannot "qemu-user-static is not installed (needed to run $ARCH binaries)"
  for f in /usr/share/binfmts/qemu-*; do update-binfmts --enable "$(basename "$f")" >/dev/null 2>&1 || true; done
fi

RELEASE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$RELEASE" ] || cannot "no VERSION_CODENAME in /etc/os-release (not a Debian release mmdebstrap can make)"
case $ARCH in
  amd64) KERNEL=linux-image-amd64 ;;
  arm64) KERNEL=linux-image-arm64 ;;
  *) cannot "no gateway kernel and boot loader chosen for $ARCH (amd64 and arm64 are)" ;;
esac
INCLUDE=systemd-sysv,dbus,udev,kmod,iproute2,systemd-resolved,systemd-timesyncd,e2fsprogs,dosfstools,python3,ca-certificates,bluez,$KERNEL,systemd-boot-efi
mapfile -t SOURCES < <(python3 scripts/apt_sources.py "$RELEASE") || true
[ ${#SOURCES[@]} -gt 0 ] || cannot "no apt source of Debian $RELEASE under /etc/apt"
mapfile -t APT_PROXY < <(apt-config dump 2>/dev/null | grep -E '^Acquire::(http|https)::Proxy ' || true)
DPKG_OPTS=(path-exclude=/usr/share/man/* path-exclude=/usr/share/doc/* path-include=/usr/share/doc/*/copyright
           path-exclude=/usr/share/locale/*)
KEY=$(printf '%s\n' "variant=minbase" "include=$INCLUDE" "release=$RELEASE" "arch=$ARCH" "${DPKG_OPTS[@]}" "${SOURCES[@]}" \
        | sha256sum | cut -c1-12)
BASE_TAR=$IMAGES_DIR/gateway-base-$RELEASE-$ARCH-$KEY.tar
mkdir -p "$IMAGES_DIR"
if [ -s "$BASE_TAR" ]; then
  step "cached: $BASE_TAR"
else
  SECONDS=0
  step "mmdebstrap (Debian $RELEASE $ARCH: $INCLUDE) from:"
  printf '     %s\n' "${SOURCES[@]}"
  opts=()
  for p in "${APT_PROXY[@]}"; do opts+=(--aptopt="$p"); done
  for d in "${DPKG_OPTS[@]}"; do opts+=(--dpkgopt="$d"); done
  rm -f "$BASE_TAR.tmp"
  mmdebstrap --quiet --mode=root --variant=minbase --architectures="$ARCH" --include="$INCLUDE" \
    --format=tar "${opts[@]}" "$RELEASE" "$BASE_TAR.tmp" "${SOURCES[@]}"
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  # Older tarballs of this release and architecture (other keys) are of no more use.
  find "$IMAGES_DIR" -maxdepth 1 -name "gateway-base-$RELEASE-$ARCH-*.tar" ! -name "$(basename "$BASE_TAR")" -delete
  step "made in ${SECONDS}s"
fi
echo "base: $BASE_TAR"
