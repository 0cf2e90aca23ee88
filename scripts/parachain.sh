#!/usr/bin/env bash
# OpenLedger as a parachain (runtime: parachain-runtime/), run by polkadot-sdk's
# polkadot-omni-node, which scripts/polkadot-bins.sh builds from crates.io into a cache.
#
#   scripts/parachain.sh spec [PRESET] [OUT]  # the parachain's chain spec (JSON) from the
#                                             # runtime blob and a genesis preset
#                                             # (development | local_testnet; default
#                                             # development, OUT default: in the cache)
#   scripts/parachain.sh dev                  # a dev chain on omni-node (blocks sealed and
#                                             # finalized every OPENLEDGER_DEV_BLOCK_MS, 3000
#                                             # by default; no relay chain), the gateway and a
#                                             # worker, as scripts/start.sh starts them
#   scripts/parachain.sh test                 # on that dev chain: the polkadot.js suite, then a
#                                             # paid completion through gateway and worker
#   scripts/parachain.sh zombienet [spawn|test]  # a local relay chain (rococo-local, two
#                                             # validators, `polkadot` of polkadot-bins.sh
#                                             # relay) with the parachain on two collators;
#                                             # test: zombienet/parachain.zndsl
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh

wasm="$CARGO_TARGET_DIR/release/wbuild/openledger-parachain-runtime/openledger_parachain_runtime.compact.compressed.wasm"
cache="${OPENLEDGER_POLKADOT_BINS:-$HOME/.cache/openledger/polkadot-bins}"

omni_node() {
    local bin
    if ! bin=$(bash scripts/polkadot-bins.sh path polkadot-omni-node); then
        bash scripts/polkadot-bins.sh omni-node >&2
        bin=$(bash scripts/polkadot-bins.sh path polkadot-omni-node)
    fi
    echo "$bin"
}

# Prints one field (a dotted path) of the JSON document on stdin: a scalar as it is, an
# object as KEY=VALUE,... (chain-spec-builder's --properties form).
json_field() {
    node -e '
        let text = "";
        process.stdin.on("data", (d) => (text += d)).on("end", () => {
            let v = JSON.parse(text);
            for (const k of process.argv[1].split(".")) {
                if (v === null || typeof v !== "object" || !(k in v)) {
                    console.error(`no field ${process.argv[1]} in the JSON given`);
                    process.exit(1);
                }
                v = v[k];
            }
            console.log(typeof v === "object" ? Object.entries(v).map(([k, x]) => `${k}=${x}`).join(",") : v);
        });' "$1"
}

# Writes the chain spec of PRESET to OUT: the runtime blob, its genesis preset, OPEN's
# properties and the relay chain it belongs to.
write_spec() {
    local preset=$1 out=$2 bin name id chain_type
    if [ ! -f "$wasm" ] || [ ! -x "$OPENLEDGER_NODE" ]; then
        bash scripts/build.sh --quiet --bins
    fi
    bin=$(omni_node)
    case "$preset" in
        development) name="OpenLedger Parachain Development"; id=openledger_para_dev; chain_type=development ;;
        local_testnet) name="OpenLedger Parachain Local"; id=openledger_para_local; chain_type=local ;;
        *) echo "unknown preset '$preset': development or local_testnet" >&2; exit 2 ;;
    esac
    # OPEN's properties as the solo node's chain specs carry them, and the para id the
    # preset registers under: read from those, not repeated here.
    local props para_id
    props=$("$OPENLEDGER_NODE" build-spec --chain dev 2>/dev/null | json_field properties)
    para_id=$("$bin" chain-spec-builder display-preset --runtime "$wasm" --preset-name "$preset" |
        json_field parachainInfo.parachainId)
    mkdir -p "$(dirname "$out")"
    "$bin" chain-spec-builder --chain-spec-path "$out" create \
        --chain-name "$name" --chain-id "$id" -t "$chain_type" \
        --relay-chain rococo-local --para-id "$para_id" --properties "$props" \
        --verify --runtime "$wasm" named-preset "$preset" >&2
    echo "$out"
}

case "${1:-}" in
    spec)
        preset=${2:-development}
        write_spec "$preset" "${3:-$cache/specs/$preset.json}"
        ;;
    dev | test)
        bash scripts/setup.sh
        bash scripts/build.sh --quiet --bins
        bin=$(omni_node)
        spec=$(write_spec development "$cache/specs/development.json")
        export OPENLEDGER_PARACHAIN_SPEC="$spec" OPENLEDGER_OMNI_NODE="$bin"
        export OPENLEDGER_DEV_BLOCK_MS="${OPENLEDGER_DEV_BLOCK_MS:-3000}"
        if [ "$1" = dev ]; then
            exec bash scripts/start.sh
        fi
        status=0
        echo "== polkadot.js suite against the parachain runtime on polkadot-omni-node"
        start=$(date +%s)
        (cd scripts/e2e && node --test --test-concurrency=1 tests/) || status=1
        echo "polkadot.js suite on the parachain: $(( $(date +%s) - start )) s"
        echo "== a paid completion through gateway and worker on the parachain"
        start=$(date +%s)
        read -r rpc prom http p2p < <(free_ports 4)
        state="$(mktemp -d "${TMPDIR:-/tmp}/openledger-parachain-test.XXXXXX")"
        trap 'rm -rf "$state"' EXIT
        GATEWAY_FLAGS="--no-channels ${GATEWAY_FLAGS:-}" OPENLEDGER_DEMO_DIR="$state" \
            RPC_PORT="$rpc" PROMETHEUS_PORT="$prom" HTTP_PORT="$http" P2P_PORT="$p2p" \
            bash scripts/start.sh --then node scripts/e2e/paid-completion.js || status=1
        echo "paid completion on the parachain: $(( $(date +%s) - start )) s"
        exit "$status"
        ;;
    zombienet)
        bash scripts/setup.sh
        bash scripts/build.sh --quiet --bins
        POLKADOT_OMNI_NODE=$(omni_node)
        if ! POLKADOT_RELAY=$(bash scripts/polkadot-bins.sh path polkadot); then
            bash scripts/polkadot-bins.sh relay >&2
            POLKADOT_RELAY=$(bash scripts/polkadot-bins.sh path polkadot)
        fi
        OPENLEDGER_PARA_SPEC=$(write_spec local_testnet "$cache/specs/local_testnet.json")
        export POLKADOT_OMNI_NODE POLKADOT_RELAY OPENLEDGER_PARA_SPEC
        zn=(node zombienet/node_modules/@zombienet/cli/dist/cli.js --provider native)
        case "${2:-spawn}" in
            spawn) exec "${zn[@]}" spawn zombienet/parachain.toml ;;
            test) zombienet_tests parachain-zombienet zombienet/parachain.zndsl ;;
            *) echo "usage: scripts/parachain.sh zombienet [spawn|test]" >&2; exit 2 ;;
        esac
        ;;
    *)
        echo "usage: scripts/parachain.sh spec [PRESET] [OUT] | dev | test | zombienet [spawn|test]" >&2
        exit 2
        ;;
esac
