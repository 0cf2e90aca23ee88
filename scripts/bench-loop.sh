#!/usr/bin/env bash
# Full-loop benchmark (docs/benchmarks.md): a dev chain, a gateway and one CPU worker with
# four demo adapters (scripts/start.sh), then loop-bench: requests per second and p50/p99
# latency for 1, 8 and 32 concurrent clients, and the chain-side overhead per job.
#
#   scripts/bench-loop.sh [loop-bench flags, e.g. --clients 1,8,32 --requests 4]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
export DEMO_ADAPTERS=4 MAX_CONCURRENT="${MAX_CONCURRENT:-64}" HTTP_PORT="${HTTP_PORT:-18080}" RPC_PORT="${RPC_PORT:-19944}" \
    P2P_PORT="${P2P_PORT:-14001}" PROMETHEUS_PORT="${PROMETHEUS_PORT:-19615}"
nproc_=$(nproc)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $nproc_ cores"
exec bash scripts/start.sh --then bash -c \
    '"$CARGO_TARGET_DIR/release/loop-bench" --http "$OPENLEDGER_HTTP" --chain-url "$OPENLEDGER_WS" --adapters "$OPENLEDGER_ADAPTERS" "$@"' \
    loop-bench "$@"
