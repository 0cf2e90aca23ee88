#!/usr/bin/env bash
# Runs the whole test suite: formatting, clippy (warnings are errors), the Rust tests
# (pallets, runtime, a real node process, the services as real processes), the polkadot.js
# and polkadot-api (PAPI) end-to-end suites against real nodes, the zombienet tests of a
# four-validator network and Open Chat's browser tests (those four beside the Rust tests),
# and the parachain form's tests on polkadot-sdk's binaries when they are built.
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

# The chain suites (the polkadot.js suite, the PAPI suite, then zombienet) wait on block times
# far more than they compute: they run beside the Rust tests, each on its own free loopback
# ports, their output kept and printed after the Rust tests' summaries.
chain_log=$(mktemp "${TMPDIR:-/tmp}/openledger-chain-suites.XXXXXX")
(
    status=0
    echo "== polkadot.js end-to-end suite"
    js_start=$(secs)
    (cd scripts/e2e && node --test --test-concurrency=1 tests/) || status=1
    echo "polkadot.js suite: $(( $(secs) - js_start )) s"
    # PAPI generates its descriptors from the node each test file starts; Node 20 has the
    # WebSocket class PAPI needs only behind a flag (Node >= 22 by default).
    echo "== polkadot-api (PAPI) end-to-end suite"
    papi_start=$(secs)
    ws_flag=()
    if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 22 ]; then
        ws_flag=(--experimental-websocket)
    fi
    (cd scripts/papi && node "${ws_flag[@]}" --test --test-concurrency=1 tests/) || status=1
    echo "PAPI suite: $(( $(secs) - papi_start )) s"
    echo "== zombienet: four validators, finality, one validator down and back"
    zn_start=$(secs)
    bash scripts/zombienet.sh test || status=1
    echo "zombienet: $(( $(secs) - zn_start )) s"
    echo "== Open Chat in a real browser (chromium) against node, gateway and worker"
    web_start=$(secs)
    bash scripts/test-web.sh || status=1
    echo "Open Chat browser tests: $(( $(secs) - web_start )) s"
    # The parachain form (issue 25) runs on polkadot-sdk's own binaries, long builds on 2
    # cores: tested here when scripts/polkadot-bins.sh has built them, else said skipped.
    echo "== the parachain runtime on polkadot-omni-node: polkadot.js suite, paid completion"
    if bash scripts/polkadot-bins.sh path polkadot-omni-node >/dev/null; then
        para_start=$(secs)
        bash scripts/parachain.sh test || status=1
        echo "parachain on polkadot-omni-node: $(( $(secs) - para_start )) s"
    else
        echo "SKIPPED: polkadot-omni-node is not built; scripts/polkadot-bins.sh omni-node builds it once (docs/benchmarks.md, Build times)"
    fi
    echo "== zombienet: a relay chain (2 validators) and the parachain (2 collators, one killed)"
    if bash scripts/polkadot-bins.sh path polkadot-omni-node >/dev/null &&
        bash scripts/polkadot-bins.sh path polkadot >/dev/null; then
        para_start=$(secs)
        bash scripts/parachain.sh zombienet test || status=1
        echo "zombienet relay + parachain: $(( $(secs) - para_start )) s"
    else
        echo "SKIPPED: polkadot and polkadot-omni-node are not both built; scripts/polkadot-bins.sh relay and omni-node build them once (docs/benchmarks.md, Build times)"
    fi
    exit "$status"
) >"$chain_log" 2>&1 &
chain_pid=$!
rust_log=$(mktemp "${TMPDIR:-/tmp}/openledger-rust-tests.XXXXXX")
trap 'kill "$chain_pid" 2>/dev/null || true; rm -f "$chain_log" "$rust_log"' EXIT

echo "== cargo test (the chain suites run beside it)"
rust_status=0
cargo test --release --locked --workspace --no-fail-fast 2>&1 | tee "$rust_log" || rust_status=$?
t2=$(secs)

chain_status=0
wait "$chain_pid" || chain_status=$?
t3=$(secs)
cat "$chain_log"

echo "build and lint: $((t1 - t0)) s, Rust tests: $((t2 - t1)) s, chain suites finished $((t3 - t1)) s after the build, total: $((t3 - t0)) s"
if [ "$rust_status" -ne 0 ]; then
    # The chain suites' output comes after the Rust tests': name the failed Rust tests again
    # at the end, where a truncated log still shows them.
    echo "Rust tests that failed:" >&2
    grep -E '^test .* FAILED$|^error: |^    `' "$rust_log" >&2 || true
fi
if [ "$rust_status" -ne 0 ] || [ "$chain_status" -ne 0 ]; then
    echo "test: FAILED (Rust tests exit $rust_status, chain suites exit $chain_status)" >&2
    exit 1
fi
