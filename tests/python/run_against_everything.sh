#!/usr/bin/env bash
# Run the Python e2e suite directly against a local server-everything (no gateway).
#
#   bash tests/python/run_against_everything.sh [extra pytest args...]
#
# Needs `npm ci` done in tests/node and the venv from tests/python/README.md
# (override the interpreter with PYTHON=...). Starts server-everything in
# streamableHttp mode on a free loopback port, runs pytest, stops the server.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
entry="$repo/tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
python="${PYTHON:-$here/.venv/bin/python}"

if [[ ! -f "$entry" ]]; then
  echo "server-everything is not installed: run 'npm ci' in tests/node" >&2
  exit 2
fi
if [[ ! -x "$python" ]]; then
  echo "no interpreter at $python: create the venv (see tests/python/README.md) or set PYTHON" >&2
  exit 2
fi

port="${PORT:-$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
log="$(mktemp -t server-everything.XXXXXX.log)"

PORT="$port" node "$entry" streamableHttp >"$log" 2>&1 &
server_pid=$!
cleanup() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap cleanup EXIT

# Wait (bounded) until it listens.
for _ in $(seq 1 100); do
  if grep -q "listening on port $port" "$log"; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "server-everything exited early:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.2
done
if ! grep -q "listening on port $port" "$log"; then
  echo "server-everything did not start within 20 s:" >&2
  cat "$log" >&2
  exit 1
fi

cd "$repo"
PALISADE_TEST_URL_EVERYTHING="http://127.0.0.1:$port/mcp" "$python" -m pytest tests/python "$@"
