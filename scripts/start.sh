#!/usr/bin/env bash
# Starts OpenLedger on embedded defaults, all on this machine: a single-validator development
# chain, an OpenAI-compatible gateway, one CPU worker serving the embedded
# SmolLM2-135M-Instruct Q4_1 with a demo adapter registered on chain, and a keeper that
# expires jobs past their deadline. Prints the link of Open Chat (the gateway's web page) and
# a curl line that returns a completion, and where to see its payout split; runs until Ctrl-C.
#
#   scripts/start.sh                  # chain ws://127.0.0.1:9944, API http://127.0.0.1:8080/v1
#   RPC_PORT=9955 HTTP_PORT=8081 scripts/start.sh
#   GATEWAY_FLAGS=--no-channels scripts/start.sh   # every request a job on chain
#   WORKER_FLAGS="--redeem-every-blocks 2" scripts/start.sh
#   DEMO_ADAPTERS=4 scripts/start.sh --then CMD ARGS...
#       # with four demo adapters; runs CMD once all is up (OPENLEDGER_HTTP, OPENLEDGER_WS,
#       # OPENLEDGER_DEMO_DIR (adapters/ holds the demo adapters), OPENLEDGER_ADAPTERS, a
#       # comma list of their ids, and OPENLEDGER_NODE_PID / OPENLEDGER_GATEWAY_PID in its
#       # environment), then stops
#       # everything and exits with CMD's status (scripts/bench-loop.sh uses this)
set -euo pipefail
then_cmd=()
if [ "${1:-}" = "--then" ]; then shift; then_cmd=("$@"); fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
echo "building (first run: ~30 min on 2 cores; then seconds)..."
bash scripts/build.sh --quiet --bins

bin="$CARGO_TARGET_DIR/release"
rpc_port="${RPC_PORT:-9944}"
prom_port="${PROMETHEUS_PORT:-9615}"
http_port="${HTTP_PORT:-8080}"
p2p_port="${P2P_PORT:-4001}"
state="${OPENLEDGER_DEMO_DIR:-$HOME/.cache/openledger/demo}"
mkdir -p "$state/adapters" "$state/logs"
ws="ws://127.0.0.1:$rpc_port"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

base="${OPENLEDGER_BASE_PATH:-}"
# The chain: the solo dev chain, or (scripts/parachain.sh dev sets these) the parachain runtime
# on polkadot-omni-node in dev mode.
chain_bin="$OPENLEDGER_NODE"
chain_args=(--dev)
chain_desc="a dev chain (validator Alice)"
if [ -n "${OPENLEDGER_PARACHAIN_SPEC:-}" ]; then
    chain_bin="${OPENLEDGER_OMNI_NODE:?OPENLEDGER_OMNI_NODE: the polkadot-omni-node binary}"
    chain_args=(--chain "$OPENLEDGER_PARACHAIN_SPEC" --dev-block-time "${OPENLEDGER_DEV_BLOCK_MS:-3000}"
        --no-hardware-benchmarks)
    chain_desc="the parachain runtime on polkadot-omni-node (dev mode, collator Alice)"
fi
node_args=("${chain_args[@]}" --rpc-port "$rpc_port" --prometheus-port "$prom_port" --rpc-cors all)
if [ -n "$base" ]; then node_args+=(--base-path "$base"); else node_args+=(--tmp); fi
# A fresh chain: channel stores of an earlier run name channels it never had.
[ -n "$base" ] || rm -f "$state/gateway-channels.redb" "$state/bob-channels.redb"
"$chain_bin" "${node_args[@]}" >"$state/logs/node.log" 2>&1 &
pids+=($!)
for i in $(seq 1 120); do
    if curl -fs -H 'content-type: application/json' \
        -d '{"id":1,"jsonrpc":"2.0","method":"system_health","params":[]}' \
        "http://127.0.0.1:$rpc_port" >/dev/null 2>&1; then break; fi
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        echo "$(basename "$chain_bin") exited before its RPC came up; see $state/logs/node.log" >&2; exit 1
    fi
    [ "$i" -eq 120 ] && { echo "$(basename "$chain_bin") RPC did not come up on port $rpc_port" >&2; exit 1; }
    sleep 1
done

# Demo adapters (random weights, real PEFT files), registered by Dave.
rm -rf "$state/adapters" && mkdir -p "$state/adapters"
adapters=()
for i in $(seq 1 "${DEMO_ADAPTERS:-1}"); do
    demo="$state/adapters/demo-$i"
    "$bin/openledger-worker" demo-adapter "$demo" --model "$OPENLEDGER_MODEL" --seed "$i" >/dev/null
    adapters+=("$("$bin/openledger-worker" --chain-url "$ws" --operator //Dave register-adapter "$demo" --price-milli 1)")
done
adapter="${adapters[0]}"

"$bin/openledger-gateway" --chain-url "$ws" --http "127.0.0.1:$http_port" \
    --listen "/ip4/127.0.0.1/tcp/$p2p_port" --key "$state/gateway.key" \
    --api-key demo-key=//Alice --model "$OPENLEDGER_MODEL" \
    --channel-store "$state/gateway-channels.redb" --web "$PWD/web/dist" --web-key demo-key \
    ${GATEWAY_FLAGS:-} \
    >"$state/logs/gateway.out" 2>"$state/logs/gateway.log" &
pids+=($!)
gateway_p2p=""
for _ in $(seq 1 60); do
    gateway_p2p=$(sed -n 's/^gateway p2p: //p' "$state/logs/gateway.out" | head -1)
    [ -n "$gateway_p2p" ] && break
    kill -0 "${pids[1]}" 2>/dev/null || { echo "the gateway exited; see $state/logs/gateway.log" >&2; exit 1; }
    sleep 1
done
[ -n "$gateway_p2p" ] || { echo "the gateway did not come up; see $state/logs/gateway.log" >&2; exit 1; }

"$bin/openledger-worker" --chain-url "$ws" --operator //Bob --worker-key "$state/bob.key" \
    --model "$OPENLEDGER_MODEL" --adapters "$state/adapters" --gateway "$gateway_p2p" \
    --register --price-milli 2 --max-concurrent "${MAX_CONCURRENT:-16}" \
    --channel-store "$state/bob-channels.redb" --answers-dir "$state/answers" ${WORKER_FLAGS:-} \
    >"$state/logs/worker.out" 2>"$state/logs/worker.log" &
pids+=($!)
for i in $(seq 1 120); do
    grep -q '^worker ready' "$state/logs/worker.out" 2>/dev/null && break
    kill -0 "${pids[2]}" 2>/dev/null || { echo "the worker exited; see $state/logs/worker.log" >&2; exit 1; }
    [ "$i" -eq 120 ] && { echo "the worker did not come up; see $state/logs/worker.log" >&2; exit 1; }
    sleep 1
done

# The keeper (Charlie's account): expires jobs past their deadline so no escrow stays held.
"$bin/openledger-worker" --chain-url "$ws" --operator //Charlie keeper \
    >"$state/logs/keeper.out" 2>"$state/logs/keeper.log" &
pids+=($!)

if [ "${#then_cmd[@]}" -gt 0 ]; then
    status=0
    OPENLEDGER_HTTP="http://127.0.0.1:$http_port/v1" OPENLEDGER_WS="$ws" OPENLEDGER_DEMO_DIR="$state" \
        OPENLEDGER_NODE_PID="${pids[0]}" OPENLEDGER_GATEWAY_PID="${pids[1]}" \
        OPENLEDGER_ADAPTERS="$(IFS=,; echo "${adapters[*]}")" "${then_cmd[@]}" || status=$?
    exit "$status"
fi

cat <<MSG

OpenLedger is running: $chain_desc, a gateway and a CPU worker (provider
Bob) serving SmolLM2-135M-Instruct with demo adapter $adapter (owner Dave).

  Open Chat (chat with the adapter, see whom each answer pays):  http://127.0.0.1:$http_port/

  Ask for a completion (paid by Alice's account through the API key demo-key):
    curl -s http://127.0.0.1:$http_port/v1/completions -H 'Authorization: Bearer demo-key' \\
      -H 'content-type: application/json' \\
      -d '{"model": "adapter-$adapter", "prompt": "OpenLedger is", "max_tokens": 32}'

  The first request opens a payment channel from Alice to Bob (channels.ChannelOpened, one
  block); from then on requests go to the worker at once, with no transaction: the answer
  names its channel and request ("openledger": {"channel": ..., "request": ...}), and the
  gateway answers each signed receipt with a voucher. The worker redeems its latest voucher
  every 100 blocks or once 1 OPEN is waiting: see channels.VoucherRedeemed and
  channels.VoucherFeeSplit (every payee and amount) in polkadot.js Apps:
    https://polkadot.js.org/apps/?rpc=ws%3A%2F%2F127.0.0.1%3A$rpc_port#/explorer
  (GATEWAY_FLAGS=--no-channels makes each request a job on chain: jobs.JobSettled and
  attribution.FeeSplit instead.)

  Cancel a running request (the worker stops and charges only what was delivered):
    curl -s -X POST http://127.0.0.1:$http_port/v1/jobs/<job or request>/cancel -H 'Authorization: Bearer demo-key'

  Chain JSON-RPC: $ws    Prometheus: http://127.0.0.1:$prom_port/metrics
  Models:         curl -s http://127.0.0.1:$http_port/v1/models
  Logs:           $state/logs/
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
echo "a component exited; see $state/logs/" >&2
exit 1
