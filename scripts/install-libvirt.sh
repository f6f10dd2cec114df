#!/usr/bin/env bash
# Installs libvirt (daemon, QEMU driver, virsh) and starts its daemons, so that the VM start benchmark
# (crates/vmo/benches/vm_start) can measure `virsh start` beside vmo and bare QEMU. Idempotent: skips
# apt when libvirt 11+ is installed and only starts the daemons that are not running.
#
# Which libvirt: the host runs QEMU 10 from bookworm-backports (scripts/install-qemu.sh). Debian 12's
# libvirt 9.0 predates QEMU 10, so the libvirt packages come from bookworm-backports too (11.x), and
# only they: an apt pin for `libvirt*` keeps everything else (systemd, QEMU) on the versions apt would
# pick anyway, and the install is refused if apt would replace or downgrade qemu-system-x86.
#
# Daemons: there is no systemd in the containers this runs in, so the script starts virtlogd and the
# QEMU daemon (monolithic libvirtd, else the modular virtqemud) itself, each with -d.
#
# Works as root or through sudo. Set VMO_LIBVIRT_FORCE=1 to re-run the apt steps anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-libvirt: not root and no sudo" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients)
PIN_FILE=/etc/apt/preferences.d/vmo-libvirt-backports

libvirt_major() {
    local v
    v=$(virsh --version 2>/dev/null || true)
    echo "${v%%.*}" | grep -E '^[0-9]+$' || echo 0
}

qemu_pkg_version() {
    dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true
}

need_install() {
    [ "${VMO_LIBVIRT_FORCE:-0}" = 1 ] && return 0
    [ "$(libvirt_major)" -lt 11 ] && return 0
    command -v virtlogd >/dev/null 2>&1 || return 0
    command -v libvirtd >/dev/null 2>&1 || command -v virtqemud >/dev/null 2>&1 || return 0
    return 1
}

if need_install; then
    # QEMU 10 first: libvirt's QEMU driver depends on some qemu-system, and it must be this one.
    ./scripts/install-qemu.sh
    qemu_before=$(qemu_pkg_version)

    echo "install-libvirt: pinning libvirt* to bookworm-backports ($PIN_FILE)"
    printf '%s\n' \
        '# Written by vmo scripts/install-libvirt.sh: libvirt must be new enough for QEMU 10 from' \
        '# bookworm-backports; nothing else is taken from backports by this pin.' \
        'Package: libvirt*' \
        'Pin: release n=bookworm-backports' \
        'Pin-Priority: 990' | $SUDO tee "$PIN_FILE" >/dev/null

    echo "install-libvirt: apt-get update"
    $SUDO apt-get update -qq

    # Refuse a transaction that would touch QEMU (remove, downgrade or replace qemu-system-x86).
    plan=$(apt-get install -s -o Dpkg::Options::=--force-confold --no-install-recommends "${PACKAGES[@]}")
    if echo "$plan" | grep -E '^(Inst|Remv) qemu-system-x86 ' >/dev/null; then
        echo "install-libvirt: apt would change qemu-system-x86 ($qemu_before); refusing:" >&2
        echo "$plan" | grep -E '^(Inst|Remv) qemu' >&2
        exit 1
    fi

    echo "install-libvirt: installing ${PACKAGES[*]} (libvirt from bookworm-backports)"
    $SUDO apt-get install -y -qq -o Dpkg::Options::=--force-confold --no-install-recommends \
        "${PACKAGES[@]}"

    if [ "$(qemu_pkg_version)" != "$qemu_before" ]; then
        echo "install-libvirt: qemu-system-x86 changed from $qemu_before to $(qemu_pkg_version)" >&2
        exit 1
    fi
    if [ "$(libvirt_major)" -lt 11 ]; then
        echo "install-libvirt: expected libvirt 11+, got: $(virsh --version 2>&1)" >&2
        exit 1
    fi
else
    echo "install-libvirt: libvirt $(virsh --version) already installed"
fi

running() {
    # A daemon counts as running when a process of that exact name exists.
    pgrep -x "$1" >/dev/null 2>&1
}

start_daemon() {
    if running "$1"; then
        echo "install-libvirt: $1 already running"
    else
        echo "install-libvirt: starting $1 -d"
        $SUDO "$1" -d
    fi
}

start_daemon virtlogd
if command -v libvirtd >/dev/null 2>&1; then
    start_daemon libvirtd
else
    start_daemon virtqemud
fi

# The first connection makes the QEMU driver probe QEMU's capabilities (seconds under TCG); do it here
# rather than inside the first timed `virsh start`.
for _ in $(seq 1 100); do
    if virsh -c qemu:///system version >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
if ! out=$(virsh -c qemu:///system version 2>&1); then
    echo "install-libvirt: the daemon does not answer on qemu:///system: $out" >&2
    exit 1
fi
echo "$out" | sed 's/^/install-libvirt: /'
