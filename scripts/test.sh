#!/usr/bin/env bash
# Runs parlor's whole test suite on a fresh Debian machine: installs what the
# tests need (from Debian packages and npm), then lints and runs every test.
# Usage: scripts/test.sh        (from anywhere; needs root or sudo for apt-get)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

apt_install() {
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        local sudo=""
        [[ $(id -u) -ne 0 ]] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
    fi
}

log "toolchain"
cargo --version
rustup component list --installed 2>/dev/null | grep -E 'clippy|rustfmt' || true

log "format and lint"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

log "unit and integration tests"
# tests/behind_nginx.rs runs parlor behind Debian's nginx, started by the test.
apt_install nginx
cargo test --locked

log "benches compile (they are run by hand: see docs/performance.md)"
cargo bench --locked --no-run

if [[ -d tests/browser ]]; then
    apt_install chromium
    # Node may come from Debian or from NodeSource (whose nodejs bundles npm
    # and conflicts with Debian's npm): install only what is missing.
    command -v node >/dev/null || apt_install nodejs
    command -v npm >/dev/null || apt_install npm
    log "browser tests (headless Chromium)"
    cargo build --locked --bin parlor
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    # One file at a time: each launches Chromium and parlor servers, and two
    # cores do not fit several of those at once without flaky timeouts.
    PARLOR_BIN="$PWD/target/debug/parlor" node --test --test-concurrency=1 tests/browser/
fi
