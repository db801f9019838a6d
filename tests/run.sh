#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the real peers the tests talk to
# (node oidc-provider from tests/peers/oidc/package-lock.json; Python msal and azure-identity
# from tests/peers/python/requirements.txt into tests/peers/python/.venv), then runs every
# test — unit, integration (loopback servers and the peers), doc tests — with every feature,
# and builds the examples.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "tests/run.sh: '$1' is required: $2" >&2
        exit 1
    }
}
need cargo "install Rust (https://rustup.rs)"
need node "install Node.js 20 or later (the oidc-provider peer runs on it)"
need npm "install npm (it comes with Node.js)"
need openssl "install openssl (the oidc-provider peer makes its test CA with it)"
need python3 "install Python 3.11 or later with venv (the msal and azure-identity peers run on it)"

echo "==> installing the oidc-provider peer (npm ci)"
npm ci --prefix tests/peers/oidc --no-audit --no-fund --loglevel=error

echo "==> installing the Python peers (msal, azure-identity)"
tests/peers/python/install.sh

echo "==> cargo test"
cargo test --all-features "$@"
