#!/usr/bin/env bash
# Installs QEMU 10 from Debian bookworm-backports, plus the tools that scripts/guest/build.sh and
# scripts/guest/test.sh need. Idempotent: does nothing when QEMU 10+ and every tool is present.
#
# Why backports: Debian 12's QEMU 7.2 corrupts TCG guests during live migration (see DESIGN.md,
# "Facts about these machines"); QEMU 10 from bookworm-backports does not.
#
# Works as root or through sudo. Set VMO_QEMU_FORCE=1 to re-run the apt steps anyway.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-qemu: not root and no sudo" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

BACKPORTS_LINE="deb http://deb.debian.org/debian bookworm-backports main"
BACKPORTS_FILE=/etc/apt/sources.list.d/bookworm-backports.list

# Host packages besides QEMU itself: firmware for UEFI guests, and what the guest build/tests use.
#   busybox-static: the guest's userland (unpacked by build.sh, installed here for the static binary)
#   kmod: depmod/modprobe to compute module load order; cpio: initramfs; e2fsprogs: ext4 partition
#   extlinux + syslinux-common: BIOS boot loader and its MBR; fdisk (sfdisk): partition table
#   dosfstools + mtools: the vfat NoCloud seed; genisoimage: iso9660 seed; socat: QMP from shell
#   iproute2 (ip, bridge): the agent's bridges, taps and tunnels, and the network namespaces tests
#   run nodes in; iptables: the default network's NAT and Services' forwarding; iputils-arping:
#   gratuitous ARP when a node takes over a load-balancer address; ebtables: attachments'
#   macspoofchk
TOOLS=(ovmf busybox-static kmod cpio e2fsprogs extlinux syslinux-common fdisk dosfstools mtools
       genisoimage socat zstd xz-utils procps iproute2 iptables iputils-arping ebtables)
# command -> package, to decide whether anything is missing without asking apt.
declare -A TOOL_CMD=(
    [kmod]=depmod [cpio]=cpio [e2fsprogs]=mkfs.ext4 [extlinux]=extlinux [fdisk]=sfdisk
    [dosfstools]=mkfs.vfat [mtools]=mcopy [genisoimage]=genisoimage [socat]=socat [zstd]=zstd
    [xz-utils]=xz [procps]=pgrep [iproute2]=ip [iptables]=iptables [iputils-arping]=arping [ebtables]=ebtables
)

qemu_major() {
    local v
    v=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
    echo "${v:-0}"
}

missing_tools() {
    local pkg out=()
    for pkg in "${TOOLS[@]}"; do
        case "$pkg" in
            ovmf) [ -e /usr/share/OVMF/OVMF_CODE.fd ] || [ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || out+=(ovmf) ;;
            busybox-static) dpkg -s busybox-static >/dev/null 2>&1 || out+=(busybox-static) ;;
            syslinux-common) [ -e /usr/lib/syslinux/mbr/mbr.bin ] || out+=(syslinux-common) ;;
            *) command -v "${TOOL_CMD[$pkg]}" >/dev/null 2>&1 || out+=("$pkg") ;;
        esac
    done
    echo "${out[@]:-}"
}

have_backports_source() {
    # One-line format (sources.list, *.list) and deb822 format (*.sources).
    grep -rhsE '^[[:space:]]*deb[[:space:]].*[[:space:]]bookworm-backports([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list >/dev/null 2>&1 && return 0
    grep -rhsE '^[[:space:]]*Suites:.*[[:space:]]bookworm-backports([[:space:]]|$)' \
        /etc/apt/sources.list.d/*.sources >/dev/null 2>&1 && return 0
    return 1
}

major=$(qemu_major)
missing=$(missing_tools)
if [ "${VMO_QEMU_FORCE:-0}" != 1 ] && [ "$major" -ge 10 ] && [ -z "$missing" ] \
    && command -v qemu-img >/dev/null 2>&1; then
    echo "install-qemu: $(qemu-system-x86_64 --version | head -1) and guest tools already installed"
    exit 0
fi

if ! have_backports_source; then
    echo "install-qemu: adding bookworm-backports apt source ($BACKPORTS_FILE)"
    echo "$BACKPORTS_LINE" | $SUDO tee "$BACKPORTS_FILE" >/dev/null
fi

echo "install-qemu: apt-get update"
$SUDO apt-get update -qq

echo "install-qemu: installing qemu-system-x86 qemu-utils from bookworm-backports"
$SUDO apt-get install -y -qq -o Dpkg::Options::=--force-confold --no-install-recommends \
    -t bookworm-backports qemu-system-x86 qemu-utils qemu-system-data

if [ -n "$missing" ] || [ "${VMO_QEMU_FORCE:-0}" = 1 ]; then
    echo "install-qemu: installing ${TOOLS[*]}"
    $SUDO apt-get install -y -qq -o Dpkg::Options::=--force-confold --no-install-recommends "${TOOLS[@]}"
fi

major=$(qemu_major)
if [ "$major" -lt 10 ]; then
    echo "install-qemu: expected QEMU 10+, got: $(qemu-system-x86_64 --version | head -1)" >&2
    exit 1
fi
echo "install-qemu: $(qemu-system-x86_64 --version | head -1)"
