#!/usr/bin/env bash
# Set up (if needed, chromium included) and run every test: unit, slow and browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser
exec python3 -m pytest -m "slow or not slow" -q "$@"
