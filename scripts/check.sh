#!/usr/bin/env bash
# The fast lane, for every change before the full suite: formatting, clippy with the
# workspace's lints (warnings are errors), the unit tests of every crate, and the check that
# the gateway links no candle. Under 10 minutes on a warm target; `scripts/test.sh` runs the
# rest (integration tests with real processes, polkadot.js, zombienet).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh

secs() { date +%s; }
t0=$(secs)

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy (release profile, warnings are errors)"
bash scripts/lint.sh

echo "== the gateway does not link candle"
if cargo tree --locked -p openledger-gateway -e normal --prefix none | grep -q '^candle'; then
    echo "openledger-gateway depends on candle:" >&2
    cargo tree --locked -p openledger-gateway -e normal -i candle-core >&2 || true
    exit 1
fi
echo "ok"

echo "== unit tests"
cargo test --release --locked --workspace --lib --bins

echo "check: $(( $(secs) - t0 )) s"
