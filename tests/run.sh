#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the real peers the tests talk to
# (node oidc-provider from tests/peers/oidc/package-lock.json; Python msal and azure-identity
# from tests/peers/python/requirements.txt into tests/peers/python/.venv), fetches the crates,
# then runs every test — unit, integration (loopback servers and the peers), doc tests — with
# every feature, and builds the examples.
#
# The tests run in a network namespace that has only loopback (`unshare -n`, lo brought up):
# a test that reached for IMDS (169.254.169.254), Entra or anything else off the machine fails
# at once instead of sending traffic. Where unshare is not allowed (not root, or a container
# without CAP_SYS_ADMIN), run `TOWER_IDENTITY_NO_NETNS=1 tests/run.sh`: the same tests, without
# that guard.
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

# The keyring tests run a real Secret Service (gnome-keyring on a private dbus-daemon) and
# cross-check with msal-extensions' LibsecretPersistence, which needs Debian's python3 with
# PyGObject and libsecret's introspection data.
keyring_packages="gnome-keyring dbus-daemon python3-gi gir1.2-secret-1 python3-venv"
if ! command -v gnome-keyring-daemon >/dev/null 2>&1 || ! command -v dbus-daemon >/dev/null 2>&1 \
    || ! /usr/bin/python3 -c 'import gi; gi.require_version("Secret", "1")' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing the Secret Service peers ($keyring_packages)"
        apt-get update -qq >/dev/null
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $keyring_packages >/dev/null
    else
        echo "tests/run.sh: the keyring tests need: apt-get install -y $keyring_packages (as root); they fail without them" >&2
    fi
fi

# The distributed-cache tests (feature `redis`) start their own redis-server per test on a
# loopback port; Debian's package also installs a system service, which they do not use.
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing the Redis peer (redis-server)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "tests/run.sh: the Redis tests need: apt-get install -y redis-server (as root); they fail without it" >&2
    fi
fi

echo "==> installing the Python libsecret peer (msal-extensions on Debian's python3)"
if ! tests/peers/python/install.sh --libsecret; then
    echo "tests/run.sh: the keyring cross-check tests will fail without it (see the message above)" >&2
fi

echo "==> fetching crates (the tests then run offline)"
cargo fetch --locked

# Tests that persist tokens with `allow_unencrypted_storage(true)` try the session's Secret
# Service first (as azure-identity does); on a desktop that is the user's own keyring. Point
# them at a bus that does not exist: they use the plaintext file, and the keyring tests pass
# their own gnome-keyring's address explicitly.
export DBUS_SESSION_BUS_ADDRESS="unix:path=/nonexistent/tower-identity-tests/bus"

if [ -n "${TOWER_IDENTITY_NO_NETNS:-}" ]; then
    echo "==> cargo test (TOWER_IDENTITY_NO_NETNS set: not isolated from the network)"
    exec cargo test --offline --all-features "$@"
fi

if ! command -v ip >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing iproute2 (brings up loopback in the test network namespace)"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
    fi
    need ip "install iproute2 (apt-get install iproute2), or run with TOWER_IDENTITY_NO_NETNS=1"
fi
if ! unshare -n true 2>/dev/null; then
    echo "tests/run.sh: 'unshare -n' is not allowed here (it needs root or CAP_SYS_ADMIN)." >&2
    echo "Run TOWER_IDENTITY_NO_NETNS=1 tests/run.sh to run the tests without network isolation." >&2
    exit 1
fi

echo "==> cargo test, in a network namespace with only loopback"
# Arguments are passed through as "$@" of the inner shell.
exec unshare -n -- sh -c 'ip link set lo up && CARGO_NET_OFFLINE=true exec cargo test --offline --all-features "$@"' sh "$@"
