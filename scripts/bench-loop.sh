#!/usr/bin/env bash
# Full-loop benchmark (docs/benchmarks.md, "Full loop"): a dev chain, a gateway and one CPU
# worker with four demo adapters (scripts/start.sh), then loop-bench, on both paths one after
# the other: first the payment-channel path (the gateway's default; the worker redeems every
# 2 blocks), preceded by the same requests on the engine alone in loop-bench's process; then
# the per-job path (a fresh chain, the gateway with --no-channels). For 1, 8 and 32 concurrent
# clients: requests per second, p50/p99 latency and time to first token, and settlement delay.
#
#   scripts/bench-loop.sh [loop-bench flags, e.g. --clients 1,8,32 --requests 4]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
export DEMO_ADAPTERS=4 MAX_CONCURRENT="${MAX_CONCURRENT:-64}" HTTP_PORT="${HTTP_PORT:-18080}" RPC_PORT="${RPC_PORT:-19944}" \
    P2P_PORT="${P2P_PORT:-14001}" PROMETHEUS_PORT="${PROMETHEUS_PORT:-19615}"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
# shellcheck disable=SC2016 # expanded by the inner shell, in start.sh's environment
run='"$CARGO_TARGET_DIR/release/loop-bench" --http "$OPENLEDGER_HTTP" --chain-url "$OPENLEDGER_WS" --adapters "$OPENLEDGER_ADAPTERS" "$@"'
WORKER_FLAGS="--redeem-every-blocks 2" bash scripts/start.sh --then bash -c \
    "$run --label channel --engine-adapters \"\$OPENLEDGER_DEMO_DIR/adapters\"" loop-bench "$@"
GATEWAY_FLAGS=--no-channels bash scripts/start.sh --then bash -c "$run --label job" loop-bench "$@"
