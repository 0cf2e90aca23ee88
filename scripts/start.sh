#!/usr/bin/env bash
# Starts OpenLedger on embedded defaults: a single-validator development chain on this
# machine. Prints where to connect, then runs until Ctrl-C.
#
#   scripts/start.sh            # RPC on ws://127.0.0.1:9944
#   RPC_PORT=9955 scripts/start.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
echo "building openledger-node (first run: ~40 min on 2 cores; then seconds)..."
bash scripts/build.sh --quiet

rpc_port="${RPC_PORT:-9944}"
prom_port="${PROMETHEUS_PORT:-9615}"
base="${OPENLEDGER_BASE_PATH:-}"
args=(--dev --rpc-port "$rpc_port" --prometheus-port "$prom_port" --rpc-cors all)
if [ -n "$base" ]; then args+=(--base-path "$base"); else args+=(--tmp); fi

"$OPENLEDGER_NODE" "${args[@]}" &
node_pid=$!
trap 'kill "$node_pid" 2>/dev/null; wait "$node_pid" 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 120); do
    if curl -fs -H 'content-type: application/json' \
        -d '{"id":1,"jsonrpc":"2.0","method":"system_health","params":[]}' \
        "http://127.0.0.1:$rpc_port" >/dev/null 2>&1; then
        cat <<MSG

OpenLedger dev chain is running (validator: Alice; dev accounts hold 1,000,000 OPEN each).
  JSON-RPC (WebSocket + HTTP): ws://127.0.0.1:$rpc_port
  polkadot.js Apps:            https://polkadot.js.org/apps/?rpc=ws%3A%2F%2F127.0.0.1%3A$rpc_port
  Prometheus metrics:          http://127.0.0.1:$prom_port/metrics
Press Ctrl-C to stop.
MSG
        wait "$node_pid"
        exit $?
    fi
    if ! kill -0 "$node_pid" 2>/dev/null; then
        echo "openledger-node exited before its RPC came up" >&2
        exit 1
    fi
    sleep 1
done
echo "openledger-node RPC did not come up on port $rpc_port within 120 s" >&2
exit 1
