#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh Debian 12 machine with a Rust toolchain:
# installs what the tests need (kubectl from Debian's kubernetes-client, QEMU 10 from
# bookworm-backports, the test guest, Chromium and the web UI's npm packages, cargo-nextest),
# checks formatting and lints, then runs every test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
# Headless Chromium for the web UI's browser tests (driven by npm's playwright-core).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
# Debian's own kubectl (kubernetes-client 1.20), unpacked beside the build, so the kubectl tests run
# against it as well as against any newer kubectl on PATH.
debian_kubectl=target/tools/kubernetes-client/usr/bin/kubectl
if [ ! -x "$debian_kubectl" ]; then
    echo "== unpacking Debian's kubernetes-client"
    mkdir -p target/tools
    (cd target/tools && rm -f kubernetes-client_*.deb && apt-get download kubernetes-client >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 || sudo apt-get update -qq; apt-get download kubernetes-client; })
    dpkg -x target/tools/kubernetes-client_*.deb target/tools/kubernetes-client
fi
export VMO_EXTRA_KUBECTL="$PWD/$debian_kubectl"

# QEMU 10 (bookworm-backports) and the tools the test guest is built with; then the guest itself,
# built once and cached outside the repository.
echo "== QEMU and the test guest"
./scripts/install-qemu.sh
VMO_TEST_GUEST=$(./scripts/guest/build.sh | tail -n 1)
export VMO_TEST_GUEST VMO_REQUIRE_QEMU=1
# As root, the tests that run nodes as separate hosts (network namespaces) must run, not skip.
if [ "$(id -u)" -eq 0 ]; then export VMO_REQUIRE_NETNS=1; fi

# The web UI (npm), embedded into the vmo binary when it is compiled.
echo "== the web UI"
./scripts/build-web.sh
export VMO_REQUIRE_WEB=1

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
