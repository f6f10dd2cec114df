#!/usr/bin/env bash
# For working on the web UI: starts `vmo up` (target/debug/vmo) in DIR serving /ui from web/dist
# at request time (VMO_UI_DIR), so `npm run build` in web/ is enough to see a change; writes
# DIR/fixtures.json for the end-to-end scenarios and prints how to run them.
#
# Usage: scripts/web-dev.sh DIR [UI_DIR]    (stop with: kill $(cat DIR/vmo.pid))
#   UI_DIR: where the UI is built (default web/dist; `OUT_DIR=UI_DIR npm run build` builds there)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(realpath -m "${1:?usage: scripts/web-dev.sh DIR}")
mkdir -p "$dir"
rm -f "$dir/data/kubeconfig"
VMO_UI_DIR=$(realpath -m "${2:-web/dist}") VMO_LOG=info setsid target/debug/vmo up --listen 127.0.0.1:0 \
    --data-dir "$dir/data" --pod-network user >"$dir/vmo.log" 2>&1 &
echo $! >"$dir/vmo.pid"
for _ in $(seq 1 100); do
    [ -s "$dir/data/kubeconfig" ] && break
    sleep 0.2
done
server=$(awk '/server:/ {print $2; exit}' "$dir/data/kubeconfig")
token=$(awk '/token:/ {print $2; exit}' "$dir/data/kubeconfig")
guest=$(ls -d ~/.cache/vmo/guests/*/ | while read -r g; do [ -f "$g/disk.qcow2" ] && echo "$g"; done | head -1)
kernel="${guest}vmlinuz"
[ -f "${guest}vmlinux" ] && kernel="${guest}vmlinux"
cat >"$dir/fixtures.json" <<JSON
{"kernel": "$kernel", "initrd": "${guest}initrd.img", "disk": "${guest}disk.qcow2",
 "kernelArgs": "console=ttyS0 quiet no_timer_check vmo.netwait=0"}
JSON
echo "server: $server"
echo "token: $token"
echo "run:  (cd web && node tests/run.mjs $server $token $dir/artifacts $dir/fixtures.json [SCENARIO...])"
