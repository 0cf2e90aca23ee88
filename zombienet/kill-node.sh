#!/usr/bin/env bash
# Kills a node for good (SIGKILL): zombienet's `NODE: run ./kill-node.sh` runs it in NODE's own
# folder of the network, whose `data` folder is that node's base path and no other's (this
# script's own command line names the folder too, not `--base-path`).
set -euo pipefail
pids=$(pgrep -f -- "--base-path $PWD/data" || true)
if [ -z "$pids" ]; then
    echo "kill-node.sh: no process runs with --base-path $PWD/data" >&2
    exit 1
fi
# shellcheck disable=SC2086
kill -9 $pids
echo "killed $pids"
