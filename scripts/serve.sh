#!/usr/bin/env bash
# Set up (if needed) and serve the dashboard at http://localhost:${PORT:-5006}/app with demo data loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PORT="${PORT:-5006}"
# uploads travel base64-encoded over the websocket: 100 MB of message for the app's 50 MB file limit
# (Panel's default of 20 MB drops the connection for files above about 15 MB)
exec python3 -m panel serve app --port "$PORT" --allow-websocket-origin "localhost:$PORT" \
    --allow-websocket-origin "127.0.0.1:$PORT" --websocket-max-message-size 104857600 "$@"
