#!/usr/bin/env bash
# Regenerates the weights of our pallets with the node's `benchmark pallet`, from the runtime
# blob built with benchmarks (the node's default features). Writes pallets/*/src/weights.rs.
#
#   scripts/benchmark/weights.sh [pallet_compute pallet_jobs pallet_attribution]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/env.sh
wasm="$CARGO_TARGET_DIR/release/wbuild/openledger-runtime/openledger_runtime.compact.compressed.wasm"
# The `benchmark` command is only in a node built with `benchmark-cli` (it pulls in much of
# polkadot's node, which the README's two commands never need).
# That brings in `frame-storage-access-test-runtime`, whose WASM build looks itself up in our
# workspace's metadata (WASM_BUILD_WORKSPACE_HINT), where it is absent without the feature, and
# fails; `benchmark pallet` never uses it, so skip it.
export SKIP_FRAME_STORAGE_ACCESS_TEST_RUNTIME_WASM_BUILD=1
cargo build --release --locked -p openledger-node --features benchmark-cli --quiet
pallets=("$@")
[ "${#pallets[@]}" -gt 0 ] || pallets=(pallet_compute pallet_jobs pallet_attribution)
for p in "${pallets[@]}"; do
    dir="pallets/${p#pallet_}/src"
    [ -d "$dir" ] || { echo "no folder $dir for $p" >&2; exit 1; }
    "$OPENLEDGER_NODE" benchmark pallet \
        --runtime "$wasm" --genesis-builder runtime --genesis-builder-preset development \
        --pallets "$p" --extrinsic '*' --steps "${STEPS:-50}" --repeat "${REPEAT:-20}" \
        --wasm-execution compiled --heap-pages 4096 \
        --template scripts/benchmark/pallet-weights.hbs --output "$dir/weights.rs"
    echo "wrote $dir/weights.rs"
done
