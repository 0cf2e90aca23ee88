#!/usr/bin/env bash
# Clippy over every crate and target with the workspace's lints ([workspace.lints] in
# Cargo.toml), warnings as errors. Same profile as the build, so it shares its dependencies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
cargo clippy --release --locked --workspace --all-targets -- -D warnings
