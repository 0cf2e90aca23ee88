# Sourced by the project's scripts: where builds go and which toolchain builds the runtime.
# shellcheck shell=bash
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/openledger/target}"
# The runtime's WASM is compiled by Debian's rustc (linked into rustup as `debian-web` by
# scripts/setup.sh) unless rustup itself has the wasm32v1-none target.
if ! rustup target list --installed 2>/dev/null | grep -qx 'wasm32v1-none'; then
    export WASM_BUILD_TOOLCHAIN="${WASM_BUILD_TOOLCHAIN:-debian-web}"
fi
OPENLEDGER_NODE_BIN="$CARGO_TARGET_DIR/release/openledger-node"
export OPENLEDGER_NODE="${OPENLEDGER_NODE:-$OPENLEDGER_NODE_BIN}"
