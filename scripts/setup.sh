#!/usr/bin/env bash
# Idempotent set-up: installs the package with its test extras; with --browser also Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
if [[ "${1:-}" == "--browser" && ! -x /usr/bin/chromium ]]; then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    for attempt in 1 2 3 4 5; do
        if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; then break; fi
        echo "apt-get failed (attempt $attempt), retrying in 10 s (dpkg lock?)"; sleep 10
    done
fi
