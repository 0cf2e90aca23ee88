#!/usr/bin/env bash
# Runs the whole test suite: formatting, clippy (warnings are errors), the Rust tests
# (pallets, runtime, a real node process, the services as real processes), the polkadot.js
# end-to-end suite against a real node, and the zombienet tests of a four-validator network.
# `scripts/check.sh` is the fast lane (formatting, clippy, unit tests).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh

secs() { date +%s; }
t0=$(secs)

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== build (release profile, shared by node and tests)"
bash scripts/build.sh

echo "== cargo clippy (warnings are errors)"
bash scripts/lint.sh
t1=$(secs)

echo "== cargo test"
cargo test --release --locked --workspace --no-fail-fast

echo "== polkadot.js end-to-end suite"
(cd scripts/e2e && node --test --test-concurrency=1 tests/)
t2=$(secs)

echo "== zombienet: four validators, finality, one validator down and back"
bash scripts/zombienet.sh test
t3=$(secs)

echo "build and lint: $((t1 - t0)) s, tests: $((t2 - t1)) s, zombienet: $((t3 - t2)) s, total: $((t3 - t0)) s"
