#!/usr/bin/env bash
# Set up (if needed) and serve the dashboard at http://localhost:${PORT:-5006}/app with demo data loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PORT="${PORT:-5006}"
exec python3 -m panel serve app --port "$PORT" --allow-websocket-origin "localhost:$PORT" \
    --allow-websocket-origin "127.0.0.1:$PORT" "$@"
