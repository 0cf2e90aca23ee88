#!/usr/bin/env bash
# Open Chat's browser tests: starts the system with scripts/start.sh on free loopback ports
# and a state folder of its own (the worker redeems its vouchers every two blocks), then runs
# web/tests/ in Debian's chromium against it; stops everything when they end. Screenshots go
# to web/screenshots/ (OPEN_CHAT_SCREENSHOTS to change).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
read -r rpc prom http p2p < <(free_ports 4)
state="$(mktemp -d "${TMPDIR:-/tmp}/openledger-web-test.XXXXXX")"
trap 'rm -rf "$state"' EXIT
status=0
RPC_PORT="$rpc" PROMETHEUS_PORT="$prom" HTTP_PORT="$http" P2P_PORT="$p2p" \
    OPENLEDGER_DEMO_DIR="$state" WORKER_FLAGS="--redeem-every-blocks 2" \
    bash scripts/start.sh --then node --test --test-concurrency=1 web/tests/ || status=$?
if [ "$status" -ne 0 ]; then
    echo "== the system's logs ($state/logs), last lines" >&2
    for f in "$state"/logs/*.log; do echo "-- $f" >&2; tail -n 30 "$f" >&2; done
fi
exit "$status"
