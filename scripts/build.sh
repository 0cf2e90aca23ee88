#!/usr/bin/env bash
# Builds everything (node, binaries, tests) with the one release profile the tests also use,
# so the start command and the test command never compile the same crate twice.
#   scripts/build.sh [--bins] [cargo options]   (--bins: the binaries only, what start.sh runs;
#                                                 the tests' later build reuses all of it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
targets=(--all-targets)
args=()
for a in "$@"; do
    case "$a" in
        --bins) targets=(--bins) ;;
        *) args+=("$a") ;;
    esac
done
cargo build --release --locked --workspace "${targets[@]}" "${args[@]}"
