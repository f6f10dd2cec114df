#!/usr/bin/env bash
# Boots vmo's test guest under QEMU (TCG) and checks its markers. Prints timings and
# "N passed, N failed"; exits non-zero when anything failed.
#
#   scripts/guest/test.sh            # builds the guest first if needed (scripts/guest/build.sh)
#
# Cases:
#   initrd   -kernel/-initrd, pc machine, vfat NoCloud seed (label cidata) on virtio-blk with a
#            #!/bin/sh user-data, virtio NIC on user networking (DHCP), vmo.dirty; then ACPI
#            system_powerdown over QMP must end QEMU within 30 s
#   pvh      -kernel vmlinux (uncompressed, PVH entry) + initrd, no seed: "no cloud-init seed";
#            then system_powerdown
#   disk     disk.img (BIOS, extlinux), q35 machine, iso9660 seed on an AHCI CD-ROM with a
#            #cloud-config (hostname, write_files, runcmd); then system_powerdown
#   reboot   disk.qcow2, user-data runs `reboot -f` under -no-reboot: QEMU must exit by itself
#
# Environment: VMO_GUEST_TEST_KEEP=DIR keeps serial logs and seeds in DIR.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
READY_DEADLINE=90
POWEROFF_DEADLINE=30

for cmd in qemu-system-x86_64 qemu-img mkfs.vfat mcopy genisoimage socat; do
    command -v "$cmd" >/dev/null 2>&1 || { echo "test: $cmd missing (run scripts/install-qemu.sh)" >&2; exit 1; }
done

t0=$(date +%s.%N)
guest=$("$here/build.sh" | tail -n 1) || { echo "test: guest build failed" >&2; exit 1; }
t1=$(date +%s.%N)
[ -f "$guest/.complete" ] || { echo "test: no guest in '$guest'" >&2; exit 1; }
echo "== guest: $guest (build.sh took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s)"
echo "== $(qemu-system-x86_64 --version | head -1)"
echo "== initrd.img $(stat -c %s "$guest/initrd.img") bytes, vmlinuz $(stat -c %s "$guest/vmlinuz") bytes"

if [ -n "${VMO_GUEST_TEST_KEEP:-}" ]; then
    work=$VMO_GUEST_TEST_KEEP; mkdir -p "$work"
else
    work=$(mktemp -d /tmp/vmo-guest-test.XXXXXX)
fi
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    [ -n "${VMO_GUEST_TEST_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

passed=0; failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# --- seeds ---------------------------------------------------------------------------------------
mkdir -p "$work/seed-a" "$work/seed-b" "$work/seed-c"
cat >"$work/seed-a/meta-data" <<'EOF'
instance-id: iid-vmo-test-a
local-hostname: vmo-test-a
EOF
cat >"$work/seed-a/user-data" <<'EOF'
#!/bin/sh
echo "USERDATA-MARKER-A $(hostname) $(id -u)"
EOF
rm -f "$work/seed-a.img"
mkfs.vfat -C -n cidata "$work/seed-a.img" 1024 >/dev/null
mcopy -i "$work/seed-a.img" "$work/seed-a/meta-data" "$work/seed-a/user-data" ::

cat >"$work/seed-b/meta-data" <<'EOF'
{"instance-id": "iid-vmo-test-b", "local-hostname": "from-meta-data"}
EOF
cat >"$work/seed-b/user-data" <<'EOF'
#cloud-config
hostname: vmo-test-b
write_files:
  - path: /etc/vmo-test/greeting
    permissions: '0600'
    content: |
      hello from write_files
      second line
  - path: /etc/vmo-test/b64
    encoding: b64
    content: QkFTRTY0LU9L
runcmd:
  - echo "RUNCMD-MARKER-B $(hostname)"
  - [ sh, -c, "echo RUNCMD-LIST-B $(cat /etc/vmo-test/b64)" ]
  - 'tr "\n" "|" < /etc/vmo-test/greeting; echo; stat -c RUNCMD-PERM-%a /etc/vmo-test/greeting'
EOF
genisoimage -quiet -V cidata -J -r -o "$work/seed-b.iso" "$work/seed-b" 2>/dev/null

cat >"$work/seed-c/meta-data" <<'EOF'
instance-id: iid-vmo-test-c
local-hostname: vmo-test-c
EOF
cat >"$work/seed-c/user-data" <<'EOF'
#!/bin/sh
echo "USERDATA-MARKER-C rebooting"
reboot -f
EOF
rm -f "$work/seed-c.img"
mkfs.vfat -C -n cidata "$work/seed-c.img" 1024 >/dev/null
mcopy -i "$work/seed-c.img" "$work/seed-c/meta-data" "$work/seed-c/user-data" ::

# --- helpers ---------------------------------------------------------------------------------------
# start NAME QEMU-ARGS...: starts QEMU with its serial console in $work/NAME.log and QMP on
# $work/NAME.qmp; sets start_ts and qpid.
start() {
    local name=$1; shift
    rm -f "$work/$name.log" "$work/$name.qmp"
    : >"$work/$name.log"
    start_ts=$(now)
    qemu-system-x86_64 -accel tcg -m 256 -nographic -monitor none \
        -serial "file:$work/$name.log" -qmp "unix:$work/$name.qmp,server=on,wait=off" \
        "$@" </dev/null >"$work/$name.qemu.out" 2>&1 &
    qpid=$!
    pids+=("$qpid")
}
# wait_for NAME STRING DEADLINE: polls the serial log; sets waited (seconds since start).
wait_for() {
    local name=$1 str=$2 deadline=$3
    while :; do
        if grep -qF -- "$str" "$work/$name.log" 2>/dev/null; then waited=$(since "$start_ts"); return 0; fi
        kill -0 "$qpid" 2>/dev/null || { waited=$(since "$start_ts"); grep -qF -- "$str" "$work/$name.log"; return; }
        if awk -v a="$start_ts" -v b="$(now)" -v d="$deadline" 'BEGIN { exit !(b - a > d) }'; then
            waited=$(since "$start_ts"); return 1
        fi
        sleep 0.05
    done
}
expect() {  # expect NAME STRING [DEADLINE]
    local name=$1 str=$2 deadline=${3:-$READY_DEADLINE}
    if wait_for "$name" "$str" "$deadline"; then ok "$name: '$str' after ${waited}s"
    else bad "$name: '$str' not seen within ${deadline}s"; fi
}
expect_line() {  # expect_line NAME LINE: LINE alone on a serial line (after earlier markers)
    local name=$1 line=$2
    if tr -d '\r' <"$work/$name.log" | grep -qxF -- "$line"; then ok "$name: line '$line'"
    else bad "$name: no line '$line'"; fi
}
qmp() {  # qmp NAME COMMAND
    printf '{"execute":"qmp_capabilities"}\n{"execute":"%s"}\n' "$2" \
        | socat -t 2 - "UNIX-CONNECT:$work/$1.qmp" >"$work/$1.qmp.out" 2>&1
}
# wait_exit DEADLINE: waits for QEMU ($qpid) to exit; sets waited.
wait_exit() {
    local deadline=$1 t
    t=$(now)
    while kill -0 "$qpid" 2>/dev/null; do
        if awk -v a="$t" -v b="$(now)" -v d="$deadline" 'BEGIN { exit !(b - a > d) }'; then
            waited=$(since "$t"); return 1
        fi
        sleep 0.1
    done
    wait "$qpid" 2>/dev/null
    waited=$(since "$t")
}
powerdown() {  # powerdown NAME
    local name=$1
    if ! qmp "$name" system_powerdown; then bad "$name: QMP system_powerdown failed"; return; fi
    if wait_exit "$POWEROFF_DEADLINE"; then ok "$name: QEMU exited ${waited}s after system_powerdown"
    else bad "$name: QEMU still running ${POWEROFF_DEADLINE}s after system_powerdown"; kill "$qpid" 2>/dev/null; fi
    if grep -qF "VMO-GUEST: powering off" "$work/$name.log"; then ok "$name: 'VMO-GUEST: powering off'"
    else bad "$name: no 'VMO-GUEST: powering off'"; fi
}
show_log_on_failure() {
    local before=$1 name=$2
    if [ "$failed" -gt "$before" ]; then
        echo "---- $name serial log (tail) ----"; tail -n 40 "$work/$name.log" | tr -d '\033' ; echo "----"
        cat "$work/$name.qemu.out" 2>/dev/null
    fi
}
report_times() {
    local name=$1
    echo "     $name timing: booted ${booted_at}s, ready ${ready_at}s (wall, from QEMU spawn)"
}

# --- (a) kernel + initrd, vfat seed, DHCP, dirtying, ACPI power button ------------------------------
f0=$failed
start initrd -kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" \
    -append "console=ttyS0 quiet vmo.dirty=16" \
    -drive "file=$work/seed-a.img,format=raw,if=virtio,readonly=on" \
    -nic user,model=virtio-net-pci,mac=52:54:00:12:34:56
expect initrd "VMO-GUEST: booted"; booted_at=$waited
expect initrd "VMO-GUEST: ready"; ready_at=$waited
expect initrd "VMO-GUEST: kernel $(sed -n 's/^kernel_release=//p' "$guest/manifest.txt")" 5
expect initrd "USERDATA-MARKER-A vmo-test-a 0" 5
expect initrd "VMO-GUEST: cloud-init done hostname=vmo-test-a" 5
expect initrd "VMO-GUEST: instance-id iid-vmo-test-a" 5
expect_line initrd "VMO-GUEST: instance-id iid-vmo-test-a"
expect_line initrd "VMO-GUEST: cloud-init done hostname=vmo-test-a"
expect initrd "VMO-GUEST: dirtying 16 MiB/s" 5
expect initrd "VMO-GUEST: net eth0 10.0.2.15" 30
report_times initrd
sleep 2    # let the dirtier run a little before the power button
powerdown initrd
show_log_on_failure "$f0" initrd

# --- (a2) PVH boot of the uncompressed vmlinux, no seed --------------------------------------------
if [ -f "$guest/vmlinux" ]; then
    f0=$failed
    start pvh -kernel "$guest/vmlinux" -initrd "$guest/initrd.img" -append "console=ttyS0 quiet"
    expect pvh "VMO-GUEST: booted"; booted_at=$waited
    expect pvh "VMO-GUEST: ready"; ready_at=$waited
    expect pvh "VMO-GUEST: no cloud-init seed" 5
    report_times pvh
    powerdown pvh
    show_log_on_failure "$f0" pvh
else
    bad "pvh: $guest/vmlinux missing"
fi

# --- (b) disk.img (BIOS/extlinux), q35, iso9660 seed on an AHCI CD-ROM, #cloud-config --------------
f0=$failed
cp --sparse=always "$guest/disk.img" "$work/disk.img"
start disk -machine q35 \
    -drive "file=$work/disk.img,format=raw,if=virtio" \
    -drive "file=$work/seed-b.iso,format=raw,media=cdrom,readonly=on" \
    -nic user,model=virtio-net-pci,mac=52:54:00:12:34:57
expect disk "VMO-GUEST: booted"; booted_at=$waited
expect disk "VMO-GUEST: ready"; ready_at=$waited
expect disk "VMO-GUEST: instance-id iid-vmo-test-b" 5
expect_line disk "VMO-GUEST: instance-id iid-vmo-test-b"
expect disk "RUNCMD-MARKER-B vmo-test-b" 5
expect disk "RUNCMD-LIST-B BASE64-OK" 5
expect disk "hello from write_files|second line|" 5
expect disk "RUNCMD-PERM-600" 5
expect disk "VMO-GUEST: cloud-init done hostname=vmo-test-b" 5
expect disk "VMO-GUEST: net eth0 10.0.2.15" 30
report_times disk
powerdown disk
show_log_on_failure "$f0" disk

# --- (c) disk.qcow2, user-data reboots the guest; -no-reboot turns that into QEMU exiting -----------
f0=$failed
qemu-img create -q -f qcow2 -F qcow2 -b "$guest/disk.qcow2" "$work/overlay.qcow2"
start reboot -no-reboot \
    -drive "file=$work/overlay.qcow2,format=qcow2,if=virtio" \
    -drive "file=$work/seed-c.img,format=raw,if=virtio,readonly=on"
expect reboot "USERDATA-MARKER-C rebooting"
if wait_exit 30; then ok "reboot: QEMU exited ${waited}s after the guest's reboot -f"
else bad "reboot: QEMU still running 30s after the guest's reboot -f"; kill "$qpid" 2>/dev/null; fi
if grep -qF "VMO-GUEST: ready" "$work/reboot.log"; then bad "reboot: guest reached ready after reboot -f"
else ok "reboot: guest did not go on to ready"; fi
show_log_on_failure "$f0" reboot

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
