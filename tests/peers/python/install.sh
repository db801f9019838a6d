#!/usr/bin/env bash
# Creates tests/peers/python/.venv and installs the pinned Python peers (requirements.txt).
#
# Idempotent: a stamp inside .venv records a hash of requirements.txt and of the python3
# that built the venv; when both still match, this prints one line and exits 0. When either
# changed the venv is rebuilt from scratch, so it holds exactly the pinned set (pip install
# over an old venv would keep packages that were dropped from the list).
# Safe to run from several test processes at once: they serialise on a flock.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
requirements="$here/requirements.txt"
stamp="$venv/.requirements.stamp"

if ! command -v python3 >/dev/null 2>&1; then
  echo "install.sh: python3 not found on PATH; the Python peers need Python 3.9+ with the venv module" >&2
  exit 1
fi

# Concurrent test binaries may all call this; only one may build the venv.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$here/.install.lock"
  flock 9
fi

wanted="$( { cat "$requirements"; python3 -c 'import sys; print(sys.executable, sys.version)'; } \
  | sha256sum | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  echo "python peers: up to date ($venv)"
  exit 0
fi

echo "python peers: building $venv" >&2
rm -rf "$venv"
if ! python3 -m venv "$venv" >&2; then
  rm -rf "$venv"
  echo "install.sh: 'python3 -m venv' failed (on Debian/Ubuntu install the python3-venv package)" >&2
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
