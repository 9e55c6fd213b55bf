#!/usr/bin/env bash
# Builds a flashable fieldgate gateway image (`make image`; docs/operations/gateways.md):
#   - the Debian root filesystem of scripts/gateway_base.sh (cached), with fieldgate-edge
#     installed by dpkg (its unit enabled), DHCP on wired interfaces (systemd-networkd),
#     resolved and timesyncd, an empty machine-id (made on first boot), and the first-boot
#     enrollment unit (fieldgate-enroll.service: runs while the boot partition holds
#     fieldgate/claim; `fieldgate edge enroll` itself is not built yet, see its hook);
#   - as a tarball: dist/fieldgate-gateway_<version>_<arch>.tar (for systemd-nspawn, a
#     container, or partitions made by hand);
#   - as a raw disk image: dist/fieldgate-gateway_<version>_<arch>.img, GPT with an EFI system
#     partition (systemd-boot, the kernel and its initramfs, label FIELDGATE, mounted at
#     /boot/efi) and the root file system (ext4, the discoverable root type of the
#     architecture); made without loop devices or mounts: sfdisk, mkfs.vfat + mtools,
#     mkfs.ext4 -d, dd. Boots on UEFI machines (and qemu with OVMF); `dd` it to the disk.
# Rebuilt only when the package, the base or the image files changed (hash beside the output).
#
# Usage: bash scripts/build_image.sh [--arch ARCH] [--deb FILE] [--out DIR] [--no-raw] [--force]
#   --arch ARCH   amd64 (default: the machine's) or arm64; a foreign one needs qemu-user through
#                 binfmt_misc, and --deb of that architecture (build_deb.sh builds the
#                 machine's own: run `make deb` on an arm64 machine)
#   --deb FILE    the fieldgate-edge package to install (default: scripts/build_deb.sh's)
#   --no-raw      only the tarball
# Exit status: 0 = built; 3 = this machine cannot build it (the reason is printed).
# Prints `tarball: <path>` and (unless --no-raw) `image: <path>` last.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ARCH=$(dpkg --print-architecture)
DEB=""
OUT=dist
RAW=1
FORCE=0
while [ $# -gt 0 ]; do
  case $1 in
    --arch) ARCH=$2; shift 2 ;;
    --deb) DEB=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-raw) RAW=0; shift ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
step() { echo "== image: $*"; }
die() { echo "build_image: $*" >&2; exit 1; }
cannot() { echo "build_image: cannot build the image here: $*" >&2; exit 3; }
SECONDS=0
[ "$(id -u)" = 0 ] || cannot "installing into the root filesystem (chroot, file owners) needs root"

case $ARCH in
  amd64) EFI=x64; EFI_BOOT=BOOTX64.EFI; ROOT_TYPE=4f68bce3-e8cd-4db1-96e7-fbcaf984b709; CONSOLE=ttyS0 ;;
  arm64) EFI=aa64; EFI_BOOT=BOOTAA64.EFI; ROOT_TYPE=b921b045-1df0-41c3-af44-4c6f280d3fae; CONSOLE=ttyAMA0 ;;
  *) cannot "no image layout for $ARCH (amd64 and arm64 have one)" ;;
esac
ESP_TYPE=c12a7328-f81f-11d2-ba4b-00a0c93ec93b

# ---- inputs: the base root filesystem and the package -----------------------------------------
status=0
base_out=$(bash scripts/gateway_base.sh --arch "$ARCH") || status=$?
[ "$status" = 0 ] || { [ "$status" = 3 ] && exit 3; die "scripts/gateway_base.sh failed ($status)"; }
BASE=$(printf '%s\n' "$base_out" | sed -n 's/^base: //p')
if [ -z "$DEB" ]; then
  [ "$ARCH" = "$(dpkg --print-architecture)" ] \
    || cannot "no fieldgate-edge package for $ARCH: build it on an $ARCH machine (make deb) and pass --deb"
  DEB=$(bash scripts/build_deb.sh | sed -n 's/^deb: //p')
fi
[ -s "$DEB" ] || die "no package at $DEB"
DEB_ARCH=$(dpkg-deb -f "$DEB" Architecture)
[ "$DEB_ARCH" = "$ARCH" ] || die "$DEB is a package for $DEB_ARCH, not $ARCH"
VERSION=$(dpkg-deb -f "$DEB" Version | sed 's/-[^-]*$//')

NAME=$OUT/fieldgate-gateway_${VERSION}_$ARCH
TARBALL=$NAME.tar
IMAGE=$NAME.img
HASH=$({ echo "$RAW"; basename "$BASE"; sha256sum "$DEB" scripts/build_image.sh packaging/image/*; } | sha256sum | cut -c1-16)
if [ "$FORCE" = 0 ] && [ -s "$TARBALL" ] && { [ "$RAW" = 0 ] || [ -s "$IMAGE" ]; } \
    && [ "$(cat "$NAME.source-hash" 2>/dev/null)" = "$HASH" ]; then
  step "$TARBALL is current"
  echo "tarball: $ROOT/$TARBALL"
  [ "$RAW" = 0 ] || echo "image: $ROOT/$IMAGE"
  exit 0
fi
for tool in sfdisk mkfs.vfat mcopy mkfs.ext4; do
  [ "$RAW" = 0 ] || command -v "$tool" >/dev/null 2>&1 \
    || cannot "$tool is missing (Debian packages fdisk, dosfstools, mtools, e2fsprogs; scripts/gateway_base.sh installs them)"
done

mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/fieldgate-image.XXXXXX")
cleanup() {
  for m in dev/pts dev proc sys; do mountpoint -q "$WORK/rootfs/$m" 2>/dev/null && umount -l "$WORK/rootfs/$m"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
R=$WORK/rootfs
mkdir -p "$R"
step "root filesystem from $(basename "$BASE")"
tar -C "$R" --numeric-owner --xattrs --xattrs-include='*' -xf "$BASE"

# ---- the package and the image's own files --------------------------------------------------------
step "installing $(basename "$DEB")"
cp "$DEB" "$R/var/tmp/fieldgate-edge.deb"
mount -t proc proc "$R/proc"
# dpkg, not apt: the base already holds every dependency, and a missing one must fail here.
chroot "$R" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 dpkg -i /var/tmp/fieldgate-edge.deb
rm -f "$R/var/tmp/fieldgate-edge.deb"
chroot "$R" dpkg-query -W -f='${Status}\n' fieldgate-edge | grep -q 'install ok installed' || die "fieldgate-edge did not install"
[ -L "$R/etc/systemd/system/multi-user.target.wants/fieldgate-edge.service" ] || die "fieldgate-edge.service is not enabled"

step "first-boot enrollment unit, network, host name"
install -D -m 0755 packaging/image/fieldgate-enroll "$R/usr/lib/fieldgate/fieldgate-enroll"
install -D -m 0644 packaging/image/fieldgate-enroll.service "$R/etc/systemd/system/fieldgate-enroll.service"
install -D -m 0644 packaging/image/80-dhcp.network "$R/etc/systemd/network/80-dhcp.network"
install -d -m 0700 "$R/boot/efi"
echo fieldgate > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tfieldgate\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
chroot "$R" systemctl enable fieldgate-enroll.service systemd-networkd.service systemd-resolved.service \
  systemd-timesyncd.service >/dev/null 2>&1
umount "$R/proc"
# First boot makes the machine's identity: machine-id (and with it DHCP's client id).
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R/var/lib/systemd/random-seed"
rm -rf "$R/var/cache/apt/archives/"*.deb "$R/var/lib/apt/lists/"* "$R/tmp/"* "$R/var/tmp/"*

step "tarball"
tar -C "$R" --numeric-owner --xattrs --xattrs-include='*' -cf "$TARBALL.tmp" .
mv "$TARBALL.tmp" "$TARBALL"

# ---- the raw disk image -------------------------------------------------------------------------------
if [ "$RAW" = 1 ]; then
  step "raw disk image"
  ESP_MB=256
  ROOT_MB=$(( $(du -sm "$R" | cut -f1) * 13 / 10 + 512 ))
  DISK_MB=$(( 1 + ESP_MB + ROOT_MB + 1 ))
  ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
  ROOT_PARTUUID=$(cat /proc/sys/kernel/random/uuid)
  ESP_PARTUUID=$(cat /proc/sys/kernel/random/uuid)
  KERNEL=$(cd "$R/boot" && ls vmlinuz-* | sort -V | tail -n 1)
  INITRD=initrd.img-${KERNEL#vmlinuz-}
  [ -s "$R/boot/$INITRD" ] || die "no $INITRD in the root filesystem"
  # fstab of the disk: root by PARTUUID, the ESP (where the claim file goes) at /boot/efi.
  cat > "$R/etc/fstab" <<FSTAB
# fieldgate gateway image (scripts/build_image.sh)
PARTUUID=$ROOT_PARTUUID  /          ext4  errors=remount-ro          0 1
PARTUUID=$ESP_PARTUUID   /boot/efi  vfat  umask=0077,nofail          0 2
FSTAB
  # The ESP: systemd-boot as the removable-media boot loader, one entry, the kernel and initramfs.
  truncate -s "${ESP_MB}M" "$WORK/esp.img"
  mkfs.vfat -F 32 -n FIELDGATE "$WORK/esp.img" >/dev/null
  export MTOOLS_SKIP_CHECK=1
  mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/fieldgate
  mcopy -i "$WORK/esp.img" "$R/usr/lib/systemd/boot/efi/systemd-boot$EFI.efi" "::/EFI/BOOT/$EFI_BOOT"
  mcopy -i "$WORK/esp.img" "$R/boot/$KERNEL" ::/vmlinuz
  mcopy -i "$WORK/esp.img" "$R/boot/$INITRD" ::/initrd.img
  printf 'default fieldgate.conf\ntimeout 0\n' > "$WORK/loader.conf"
  printf 'title fieldgate gateway %s\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=PARTUUID=%s rw console=tty0 console=%s,115200\n' \
    "$VERSION" "$ROOT_PARTUUID" "$CONSOLE" > "$WORK/entry.conf"
  mcopy -i "$WORK/esp.img" "$WORK/loader.conf" ::/loader/loader.conf
  mcopy -i "$WORK/esp.img" "$WORK/entry.conf" ::/loader/entries/fieldgate.conf
  mcopy -i "$WORK/esp.img" packaging/image/README-boot.txt ::/fieldgate/README.txt
  # The root file system, filled from the directory (no mount).
  mkfs.ext4 -q -L fieldgate-root -U "$ROOT_UUID" -d "$R" "$WORK/root.img" "${ROOT_MB}M"
  truncate -s "${DISK_MB}M" "$IMAGE.tmp"
  sfdisk --quiet "$IMAGE.tmp" <<PARTS
label: gpt
start=1MiB, size=${ESP_MB}MiB, type=$ESP_TYPE, uuid=$ESP_PARTUUID, name="ESP"
start=$(( 1 + ESP_MB ))MiB, size=${ROOT_MB}MiB, type=$ROOT_TYPE, uuid=$ROOT_PARTUUID, name="root"
PARTS
  dd if="$WORK/esp.img" of="$IMAGE.tmp" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$WORK/root.img" of="$IMAGE.tmp" bs=1M seek=$(( 1 + ESP_MB )) conv=notrunc,sparse status=none
  mv "$IMAGE.tmp" "$IMAGE"
fi
echo "$HASH" > "$NAME.source-hash"
step "built in ${SECONDS}s: $TARBALL ($(du -h "$TARBALL" | cut -f1))$([ "$RAW" = 0 ] || echo ", $IMAGE ($(du -h --apparent-size "$IMAGE" | cut -f1))")"
echo "tarball: $ROOT/$TARBALL"
[ "$RAW" = 0 ] || echo "image: $ROOT/$IMAGE"
