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
        status=0
        # Each test's network files (node databases, logs) go in a directory this script
        # owns: removed when every test passed, kept (and named) for reading otherwise.
        work=$(mktemp -d "${TMPDIR:-/tmp}/openledger-zombienet.XXXXXX")
        for t in zombienet/network.zndsl zombienet/fault-tolerance.zndsl; do
            echo "== zombienet $t"
            start=$(date +%s)
            if "${zn[@]}" --dir "$work/$(basename "$t" .zndsl)" test "$t"; then
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
        exit "$status"
        ;;
    *)
        echo "usage: scripts/zombienet.sh [spawn|test]" >&2
        exit 2
        ;;
esac
