#!/usr/bin/env bash
# Builds vmo's test guest from Debian packages and caches it outside the repo.
#
#   scripts/guest/build.sh            # prints the output directory as its last stdout line
#   dir=$(scripts/guest/build.sh | tail -1)
#
# Output directory: ${VMO_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmo/guests}/<hash>, where <hash>
# covers this script, the guest's /init and its udhcpc script. It holds:
#   vmlinuz      Debian's kernel (linux-image-amd64 -> the versioned package it depends on)
#   vmlinux      the same kernel uncompressed (ELF with a PVH note): `-kernel vmlinux` boots ~5 s
#                faster under TCG than `-kernel vmlinuz`
#   initrd.img   busybox initramfs with /init and the kernel modules the guest needs, in load order
#   disk.img     BIOS-bootable raw disk: extlinux MBR + one ext4 partition with vmlinuz, initrd.img,
#                extlinux.conf (console=ttyS0)
#   disk.qcow2   the same disk, converted by qemu-img
#   manifest.txt package versions, kernel release, sizes
#
# Nothing is installed on the host: the .debs are fetched with `apt-get download` and unpacked with
# `dpkg -x`. Host tools needed (scripts/install-qemu.sh installs them): apt, dpkg, kmod (depmod,
# modprobe), cpio, gzip, e2fsprogs, extlinux, syslinux-common, sfdisk, qemu-img. Writing extlinux to
# the ext4 partition needs a loop mount, so that step runs as root (or through sudo).
#
# Environment:
#   VMO_GUEST_CACHE      cache root (see above)
#   VMO_GUEST_REBUILD=1  rebuild even when the cached output exists
#   VMO_GUEST_DEBS=DIR   take linux-image-*.deb and busybox-static_*.deb from DIR instead of apt
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "guest-build: $*" >&2; }
die() { echo "guest-build: error: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Modules /init loads at boot, by name; modprobe adds their dependencies in load order. /init skips
# ata_piix and ahci when the machine has no IDE or AHCI controller.
MODULES_BOOT=(
    virtio_pci virtio_blk virtio_net virtio_scsi virtio_rng virtio_balloon virtio_console
    sd_mod sr_mod ata_piix ahci
    isofs vfat nls_cp437 nls_ascii nls_iso8859-1 nls_utf8
    button evdev
)
# Modules carried in the initramfs but loaded on demand (`modprobe ext4`, or by the kernel on
# `mount -t ext4`): loading ext4 and its crc/jbd2 dependencies costs ~0.5 s under TCG and the guest
# itself never mounts ext4.
MODULES_LAZY=(ext4)

inputs=("$here/build.sh" "$here/init" "$here/udhcpc.script")
for f in "${inputs[@]}"; do [ -f "$f" ] || die "missing input $f"; done
hash=$(cat "${inputs[@]}" | sha256sum | cut -c1-16)
cache_root=${VMO_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmo/guests}
out="$cache_root/$hash"

if [ "${VMO_GUEST_REBUILD:-0}" != 1 ] && [ -f "$out/.complete" ]; then
    touch "$out/.complete" 2>/dev/null || true    # last use, for pruning
    log "cached: $out"
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root"
# One builder per hash at a time (tests may call this script concurrently).
exec 9>"$cache_root/.lock-$hash"
flock 9
if [ "${VMO_GUEST_REBUILD:-0}" != 1 ] && [ -f "$out/.complete" ]; then
    log "cached (built concurrently): $out"
    echo "$out"
    exit 0
fi

for cmd in apt-get dpkg depmod modprobe cpio gzip mkfs.ext4 extlinux sfdisk qemu-img flock; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (run scripts/install-qemu.sh)"
done
mbr=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$mbr" ] || die "$mbr not found (install syslinux-common)"

start=$(date +%s.%N)
work=$(mktemp -d "$cache_root/.build-$hash.XXXXXX")
mnt=""
cleanup() {
    if [ -n "$mnt" ] && mountpoint -q "$mnt" 2>/dev/null; then $SUDO umount "$mnt" || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# --- fetch the packages -------------------------------------------------------------------------
debs="$work/debs"
mkdir -p "$debs"
if [ -n "${VMO_GUEST_DEBS:-}" ]; then
    cp "$VMO_GUEST_DEBS"/linux-image-*.deb "$VMO_GUEST_DEBS"/busybox-static_*.deb "$debs/"
else
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    if [ -z "$kpkg" ]; then
        log "apt lists empty or stale: apt-get update"
        $SUDO apt-get update -qq
        kpkg=$(apt-cache depends linux-image-amd64 \
            | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    fi
    [ -n "$kpkg" ] || die "cannot resolve the package linux-image-amd64 depends on"
    log "downloading $kpkg busybox-static"
    # As root, apt's sandbox user cannot write into our private dir: download as root.
    sandbox=(); [ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
    (cd "$debs" && apt-get download -q "${sandbox[@]}" "$kpkg" busybox-static >/dev/null) \
        || die "apt-get download $kpkg busybox-static failed"
fi
kdeb=$(ls "$debs"/linux-image-*.deb | head -1)
bdeb=$(ls "$debs"/busybox-static_*.deb | head -1)

# --- unpack the kernel and compute module load order ---------------------------------------------
kroot="$work/kernel"
dpkg -x "$kdeb" "$kroot"
kver=$(ls "$kroot/lib/modules" | head -1)
[ -n "$kver" ] && [ -f "$kroot/boot/vmlinuz-$kver" ] || die "no kernel in $kdeb"
depmod -b "$kroot" "$kver"

root="$work/initramfs"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,mnt,root,etc/acpi/PWRF,usr/share/udhcpc}
mkdir -p "$root/lib/modules/$kver"
: >"$root/etc/modules.list"
declare -A seen=()
nmods=0
add_modules() {  # add_modules LIST-FILE MODULE...: copies modules + deps, appends them in load order
    local list=$1 m deps kind path rel; shift
    for m in "$@"; do
        deps=$(modprobe -d "$kroot" -S "$kver" --show-depends "$m") || die "modprobe --show-depends $m failed"
        while read -r kind path _rest; do
            [ "$kind" = insmod ] || continue   # "builtin X": nothing to load
            rel=${path#"$kroot"}
            [ -z "${seen[$rel]:-}" ] || continue
            seen[$rel]=1
            mkdir -p "$root$(dirname "$rel")"
            case "$rel" in
                *.ko) cp "$kroot$rel" "$root$rel" ;;
                *.ko.xz) xz -dc "$kroot$rel" >"$root${rel%.xz}"; rel=${rel%.xz} ;;
                *.ko.zst) zstd -qdc "$kroot$rel" >"$root${rel%.zst}"; rel=${rel%.zst} ;;
                *) die "unexpected module file $rel" ;;
            esac
            [ -z "$list" ] || echo "$rel" >>"$list"
            nmods=$((nmods + 1))
        done <<<"$deps"
    done
}
add_modules "$root/etc/modules.list" "${MODULES_BOOT[@]}"
add_modules "" "${MODULES_LAZY[@]}"
# modules.dep & co. for the subset, so that busybox modprobe (and the kernel's request_module) work.
for f in modules.order modules.builtin modules.builtin.modinfo; do
    [ -f "$kroot/lib/modules/$kver/$f" ] && cp "$kroot/lib/modules/$kver/$f" "$root/lib/modules/$kver/"
done
depmod -b "$root" "$kver"
rm -f "$root/lib/modules/$kver"/*.bin "$root/lib/modules/$kver/modules.builtin.modinfo"

# --- busybox userland -----------------------------------------------------------------------------
bbroot="$work/busybox"
dpkg -x "$bdeb" "$bbroot"
cp "$bbroot/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list-full); do
    [ "$applet" = bin/busybox ] && continue
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
bbver=$(dpkg-deb -f "$bdeb" Version)
kpkgver="$(dpkg-deb -f "$kdeb" Package) $(dpkg-deb -f "$kdeb" Version)"

install -m 0755 "$here/init" "$root/init"
install -m 0755 "$here/udhcpc.script" "$root/usr/share/udhcpc/default.script"
# busybox acpid runs /etc/acpi/PWRF/00000080 for the power button (KEY_POWER on an evdev).
cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "VMO-GUEST: powering off" >/dev/console
sync
poweroff -f
EOF
chmod 0755 "$root/etc/acpi/PWRF/00000080"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
echo "vmo-guest" >"$root/etc/hostname"
echo "$kver" >"$root/etc/vmo-kernel"
cat >"$root/etc/vmo-guest" <<EOF
kernel_package=$kpkgver
busybox=$bbver
inputs=$hash
EOF

img="$work/out"
mkdir -p "$img"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
    | gzip -9 >"$img/initrd.img"
cp "$kroot/boot/vmlinuz-$kver" "$img/vmlinuz"

# vmlinux: the uncompressed ELF kernel inside the bzImage. Debian's kernel has CONFIG_PVH, so QEMU
# boots it directly with `-kernel vmlinux` (PVH entry), skipping the bzImage's in-guest XZ
# decompression, which takes ~5-6 s under TCG.
extract_vmlinux() {
    local magic cmd off
    for pair in '\xfd7zXZ\x00:xz -dcq --single-stream' '\x28\xb5\x2f\xfd:zstd -dcq' \
                '\x1f\x8b\x08:gzip -dcq'; do
        magic=${pair%%:*}; cmd=${pair#*:}
        command -v "${cmd%% *}" >/dev/null 2>&1 || continue
        for off in $(LC_ALL=C grep -obUaP "$magic" "$img/vmlinuz" | cut -d: -f1 | head -3); do
            tail -c +$((off + 1)) "$img/vmlinuz" | $cmd >"$work/vmlinux" 2>/dev/null
            if [ "$(head -c 4 "$work/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ]; then
                mv "$work/vmlinux" "$img/vmlinux"
                return 0
            fi
        done
    done
    return 1
}
extract_vmlinux || log "warning: could not extract vmlinux from vmlinuz (no PVH boot artifact)"

# --- BIOS-bootable disk ---------------------------------------------------------------------------
# The ext4 partition is made as its own file (mkfs.ext4 -d fills it without mounting), extlinux is
# installed into it through a loop mount, then it is copied into the disk image behind the MBR.
# extlinux 6.04 cannot read ext4 with 64bit, metadata_csum or orphan_file, so those are off, and it
# fails with "I/O error" loading the kernel from a 1 KiB-block ext4 (mkfs's default for small
# filesystems), so the block size is 4 KiB.
bootdir="$work/boot"
mkdir -p "$bootdir"
cp "$img/vmlinuz" "$img/initrd.img" "$bootdir/"
cat >"$bootdir/extlinux.conf" <<'EOF'
SERIAL 0 115200
DEFAULT vmo
PROMPT 0
TIMEOUT 0
LABEL vmo
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0,115200 quiet no_timer_check
EOF
kib=$(du -sk "$bootdir" | cut -f1)
part_mib=$(( (kib / 1024) + 16 ))           # room for ldlinux.sys and the journal
part="$work/part.img"
truncate -s "${part_mib}M" "$part"
mkfs.ext4 -q -F -b 4096 -L vmoboot -O ^64bit,^metadata_csum,^orphan_file,^metadata_csum_seed \
    -E root_owner=0:0 -d "$bootdir" "$part" 2>/dev/null \
    || mkfs.ext4 -q -F -b 4096 -L vmoboot -O ^64bit,^metadata_csum -E root_owner=0:0 -d "$bootdir" "$part"
mnt="$work/mnt"
mkdir -p "$mnt"
$SUDO mount -o loop "$part" "$mnt" || die "loop mount of the boot partition failed (needs root)"
$SUDO extlinux --install "$mnt" >/dev/null 2>&1 || die "extlinux --install failed"
$SUDO umount "$mnt"
mnt=""
disk="$img/disk.img"
truncate -s "$(( part_mib + 1 ))M" "$disk"
echo 'start=2048, type=83, bootable' | sfdisk -q --label dos "$disk" >/dev/null
dd if="$part" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$mbr" of="$disk" bs=440 count=1 conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 "$disk" "$img/disk.qcow2"

end=$(date +%s.%N)
cat >"$img/manifest.txt" <<EOF
inputs_hash=$hash
kernel_package=$kpkgver
kernel_release=$kver
busybox_package=busybox-static $bbver
modules=$nmods
initrd_bytes=$(stat -c %s "$img/initrd.img")
vmlinuz_bytes=$(stat -c %s "$img/vmlinuz")
vmlinux_bytes=$(stat -c %s "$img/vmlinux" 2>/dev/null || echo 0)
disk_bytes=$(stat -c %s "$disk")
qcow2_bytes=$(stat -c %s "$img/disk.qcow2")
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
build_seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
EOF
cp "$root/etc/modules.list" "$img/modules.list"
touch "$img/.complete"

rm -rf "$out"
mv "$img" "$out"
# Prune builds of other inputs unused for 7 days, and builders' leftovers.
for d in "$cache_root"/*/; do
    d=${d%/}
    [ "$d" != "$out" ] && [ -f "$d/.complete" ] || continue
    if [ -n "$(find "$d/.complete" -mtime +7 2>/dev/null)" ]; then
        rm -rf "$d" "$cache_root/.lock-${d##*/}"
    fi
done
find "$cache_root" -maxdepth 1 -name '.build-*' -mtime +1 -exec rm -rf {} + 2>/dev/null || true
log "built $out (kernel $kver, $nmods modules, initrd $(du -h "$out/initrd.img" | cut -f1))"
echo "$out"
