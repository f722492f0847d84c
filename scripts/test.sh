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

# Installs packages without starting the services they ship (tests start
# their own servers on free ports): a policy-rc.d that denies every start,
# for the duration of the install, unless the machine already has one.
apt_install_without_starting() {
    local policy=/usr/sbin/policy-rc.d sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    if dpkg -s "$@" >/dev/null 2>&1 || [[ -e $policy ]]; then
        apt_install "$@"
        return
    fi
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    apt_install "$@" || { $sudo rm -f "$policy"; return 1; }
    $sudo rm -f "$policy"
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
# Cluster mode's tests (tests/cluster.rs, and the run below) start their own
# redis-server on a free port; the system's Redis is never used.
apt_install_without_starting redis-server
cargo test --locked

log "the integration suite again, against 3 nodes on one Redis"
# Each request goes to a random node (tests/common/mod.rs); the files that
# check the API's contract run, those about one process's internals
# (store, connections, metrics, the binary) do not.
PARLOR_TEST_CLUSTER=3 cargo test --locked \
    --test conversations --test polling --test presence --test http_edges \
    --test hardening_joins --test rate_limits --test cors --test hardening_headers \
    --test config_and_routing --test metrics --test jwt_join --test online_pages

log "benches compile (they are run by hand: see docs/performance.md)"
cargo bench --locked --no-run

if [[ -d tests/browser ]]; then
    apt_install chromium
    # Node may come from Debian or from NodeSource (whose nodejs bundles npm
    # and conflicts with Debian's npm): install only what is missing.
    command -v node >/dev/null || apt_install nodejs
    command -v npm >/dev/null || apt_install npm
    log "browser tests (headless Chromium)"
    # tests/browser/cluster.test.js starts its own redis-server (from PATH,
    # installed above) and nginx (/usr/sbin/nginx) behind which the page
    # talks to three cluster nodes.
    command -v redis-server >/dev/null || { echo "redis-server is not on PATH" >&2; exit 1; }
    cargo build --locked --bin parlor
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    # One file at a time: each launches Chromium and parlor servers, and two
    # cores do not fit several of those at once without flaky timeouts.
    PARLOR_BIN="$PWD/target/debug/parlor" node --test --test-concurrency=1 tests/browser/
fi
