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
# The runtime's WASM build looks for Cargo.lock above its output folder; the target folder
# lives outside the clone, so point it at this workspace (its lockfile pins the blob's deps).
export WASM_BUILD_WORKSPACE_HINT="${WASM_BUILD_WORKSPACE_HINT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
# The engine's default base model, fetched by scripts/setup.sh (scripts/fetch-model.sh).
export OPENLEDGER_MODEL="${OPENLEDGER_MODEL:-${OPENLEDGER_MODEL_CACHE:-$HOME/.cache/openledger/models}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}"
# free_ports N: N distinct TCP ports free on 127.0.0.1 now, on one line (all held while chosen,
# so no two are the same).
free_ports() {
    python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))' "$1"
}
# zombienet_tests NAME FILE.zndsl...: runs each zombienet test (zombienet's CLI, native
# provider) with its network files (node databases, logs) in a folder of its own: removed when
# every test passed, kept and named otherwise. Prints each test's verdict and time; returns 1
# when any failed.
zombienet_tests() {
    local name=$1 status=0 work t start r
    shift
    work=$(mktemp -d "${TMPDIR:-/tmp}/openledger-$name.XXXXXX")
    for t in "$@"; do
        echo "== zombienet $t"
        start=$(date +%s)
        if node zombienet/node_modules/@zombienet/cli/dist/cli.js --provider native \
            --dir "$work/$(basename "$t" .zndsl)" test "$t"; then
            r=passed
        else
            r=failed
            status=1
        fi
        echo "zombienet $t: $r in $(( $(date +%s) - start )) s"
    done
    if [ "$status" -eq 0 ]; then
        rm -rf "$work"
    else
        echo "zombienet: network files and node logs kept in $work" >&2
    fi
    return "$status"
}
