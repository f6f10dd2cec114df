#!/usr/bin/env bash
# Builds vmo's web UI into web/dist with npm (Debian's nodejs and npm, installed if missing); the
# vmo server embeds web/dist when it is compiled and serves it at /ui. Nothing is fetched at run
# time: npm packages come from the registry here, at set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "build-web: installing nodejs npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm
fi
cd web
npm ci --no-audit --no-fund --loglevel=error
npm run build --silent
echo "build-web: web/dist built ($(du -sh dist | cut -f1))"
