#!/usr/bin/env bash
# Creates tests/peers/python/.venv-libsecret: the pinned Python peers (requirements.txt) on
# Debian's /usr/bin/python3 with its system site-packages, where PyGObject and libsecret's
# GObject introspection (`gi.repository.Secret`) live — msal-extensions' LibsecretPersistence
# needs them, and they cannot be pip-installed without a C toolchain. Debian packages:
# python3-gi gir1.2-secret-1 python3-venv (tests/run.sh installs them when root).
#
# Idempotent like install.sh: a stamp records a hash of requirements.txt and of the python.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-libsecret"
requirements="$here/requirements.txt"
stamp="$venv/.requirements.stamp"
python=/usr/bin/python3
hint="install the Debian packages python3-gi gir1.2-secret-1 python3-venv (apt-get install -y python3-gi gir1.2-secret-1 python3-venv)"

if ! "$python" -c 'import gi; gi.require_version("Secret", "1"); from gi.repository import Secret' 2>/dev/null; then
  echo "install-libsecret.sh: $python cannot import gi.repository.Secret: $hint" >&2
  exit 1
fi

if command -v flock >/dev/null 2>&1; then
  exec 9>"$here/.install.lock"
  flock 9
fi

wanted="$( { cat "$requirements"; "$python" -c 'import sys; print(sys.executable, sys.version)'; } \
  | sha256sum | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  echo "python libsecret peer: up to date ($venv)"
  exit 0
fi

echo "python libsecret peer: building $venv" >&2
rm -rf "$venv"
if ! "$python" -m venv --system-site-packages "$venv" >&2; then
  rm -rf "$venv"
  echo "install-libsecret.sh: '$python -m venv' failed: $hint" >&2
  exit 1
fi
if ! "$venv/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
    -r "$requirements" >&2; then
  echo "install-libsecret.sh: pip install -r $requirements failed" >&2
  exit 1
fi
echo "$wanted" >"$stamp"
echo "python libsecret peer: installed into $venv"
