#!/usr/bin/env bash
# Creates tests/peers/python/.venv and installs the pinned Python peers (requirements.txt).
#
# Idempotent: a stamp inside .venv records a hash of requirements.txt and of the python3
# that built the venv; when both still match, this prints one line and exits 0. When either
# changed the venv is rebuilt from scratch, so it holds exactly the pinned set (pip install
# over an old venv would keep packages that were dropped from the list).
# Safe to run from several test processes at once: they serialise on a flock.
#
# `install.sh --libsecret` builds .venv-libsecret instead: the same pins on Debian's
# /usr/bin/python3 with its system site-packages, where PyGObject and libsecret's GObject
# introspection (`gi.repository.Secret`) live — msal-extensions' LibsecretPersistence needs
# them, and they cannot be pip-installed without a C toolchain. Debian packages: python3-gi
# gir1.2-secret-1 python3-venv (tests/run.sh installs them when root).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/requirements.txt"
if [[ "${1:-}" == "--libsecret" ]]; then
  venv="$here/.venv-libsecret"
  python=/usr/bin/python3
  venv_args=(--system-site-packages)
  hint="install the Debian packages: apt-get install -y python3-gi gir1.2-secret-1 python3-venv"
  if ! "$python" -c 'import gi; gi.require_version("Secret", "1"); from gi.repository import Secret' 2>/dev/null; then
    echo "install.sh: $python cannot import gi.repository.Secret: $hint" >&2
    exit 1
  fi
else
  venv="$here/.venv"
  python=python3
  venv_args=()
  hint="on Debian/Ubuntu install the python3-venv package"
fi
stamp="$venv/.requirements.stamp"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "install.sh: $python not found; the Python peers need Python 3.9+ with the venv module" >&2
  exit 1
fi

# Concurrent test binaries may all call this; only one may build the venv.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$here/.install.lock"
  flock 9
fi

wanted="$( { cat "$requirements"; "$python" -c 'import sys; print(sys.executable, sys.version)'; } \
  | sha256sum | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  echo "python peers: up to date ($venv)"
  exit 0
fi

echo "python peers: building $venv" >&2
rm -rf "$venv"
if ! "$python" -m venv "${venv_args[@]}" "$venv" >&2; then
  rm -rf "$venv"
  echo "install.sh: '$python -m venv' failed ($hint)" >&2
  exit 1
fi
if ! "$venv/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
    -r "$requirements" >&2; then
  # No stamp is written, so the next run starts over instead of trusting a half-built venv.
  echo "install.sh: pip install -r $requirements failed" >&2
  exit 1
fi
echo "$wanted" >"$stamp"
echo "python peers: installed into $venv"
