#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh Debian 12 machine with a Rust toolchain:
# installs what the tests need (kubectl from Debian's kubernetes-client, cargo-nextest), checks
# formatting and lints, then runs every test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "== installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== tests"
export VMO_REQUIRE_KUBECTL=1
cargo nextest run --workspace --no-fail-fast "$@"
