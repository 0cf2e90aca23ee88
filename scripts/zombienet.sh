#!/usr/bin/env bash
# A local four-validator OpenLedger network (alice, bob, charlie, dave) under zombienet's
# native provider.
#
#   scripts/zombienet.sh spawn   # start the network; zombienet prints each node's RPC endpoint
#   scripts/zombienet.sh test    # run zombienet/*.zndsl (connectivity, finality, fault tolerance)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
if [ ! -x "$OPENLEDGER_NODE" ]; then
    bash scripts/build.sh --quiet
fi
export OPENLEDGER_NODE
zn=(node zombienet/node_modules/@zombienet/cli/dist/cli.js --provider native)

case "${1:-spawn}" in
    spawn)
        exec "${zn[@]}" spawn zombienet/network.toml
        ;;
    test)
        zombienet_tests zombienet zombienet/network.zndsl zombienet/fault-tolerance.zndsl
        ;;
    *)
        echo "usage: scripts/zombienet.sh [spawn|test]" >&2
        exit 2
        ;;
esac
