#!/usr/bin/env bash
# Builds everything (node, tests) with the one release profile the tests also use, so the
# start command and the test command never compile the same crate twice.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
cargo build --release --locked --workspace --all-targets "$@"
