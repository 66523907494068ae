#!/usr/bin/env bash
# Install everything fsbridge needs on a fresh Debian machine (idempotent):
# Debian packages for FUSE (and podman/skopeo, the real peers the tests compare against),
# then a virtualenv in .venv with fsbridge installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in fuse3 libfuse3-dev pkg-config podman skopeo; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "bootstrap: installing Debian packages: ${need[*]}" >&2
    $SUDO apt-get update -qq
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2; then
        # podman/skopeo are optional peers: the core must still install without them.
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fuse3 libfuse3-dev pkg-config >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.fsbridge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q -e '.[test,plot]' >&2
    touch "$stamp"
fi
