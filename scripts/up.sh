#!/usr/bin/env bash
# Installs QEMU, builds vmo and runs `vmo up`: the API server, controllers and embedded store, with TLS and an admin
# token created on first start. Arguments go to `vmo up` (for example --listen 0.0.0.0:6443).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "vmo needs a Rust toolchain (cargo) to build; install it with rustup first" >&2
    exit 1
fi
# The node agent runs VMs with QEMU 10 from bookworm-backports.
./scripts/install-qemu.sh
# The web UI, built with npm and embedded into the binary (served at https://HOST:PORT/ui).
./scripts/build-web.sh
cargo build --release --bin vmo
exec ./target/release/vmo up "$@"
