#!/usr/bin/env bash
# Clippy over every crate and target with the workspace's lints ([workspace.lints] in
# Cargo.toml), warnings as errors. Same profile as the build, so it shares its dependencies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
# Clippy's units are its own; the runtime's WASM blob is not linted (its code is, natively),
# so its build script skips building it here.
SKIP_WASM_BUILD=1 cargo clippy --release --locked --workspace --all-targets -- -D warnings
