#!/usr/bin/env bash
# Builds polkadot-sdk's own binaries from crates.io, at the versions of the polkadot-sdk
# release our runtimes use (stable2609), into a cache outside the clone; built once, then
# found there. Each is a long build on 2 cores (docs/benchmarks.md, "Build times").
#
#   scripts/polkadot-bins.sh omni-node   # polkadot-omni-node: runs the parachain runtime
#   scripts/polkadot-bins.sh relay       # polkadot (+ its PVF workers): the relay chain
#   scripts/polkadot-bins.sh path NAME   # prints where NAME is (exit 1 when not built yet)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Not our workspace's lockfile: each binary builds with its own.
unset WASM_BUILD_WORKSPACE_HINT
crate_src=

cache="${OPENLEDGER_POLKADOT_BINS:-$HOME/.cache/openledger/polkadot-bins}"
# polkadot-sdk stable2609 (umbrella 2609.2.0): the crates.io versions of its binaries.
omni_version=0.24.0
relay_version=41.0.0

built() { [ -x "$cache/bin/$1" ] && [ "$(cat "$cache/bin/.$1.version" 2>/dev/null)" = "$2" ]; }

install_crate() { # crate version binary...
    local crate=$1 version=$2
    shift 2
    if built "$1" "$version"; then
        echo "$crate $version: already built in $cache/bin"
        return
    fi
    echo "building $crate $version from crates.io into $cache (long: see docs/benchmarks.md)..."
    local start
    start=$(date +%s)
    # Their own target folder: a different lockfile and feature set from our workspace's.
    # From crates.io, or from its unpacked sources ($crate_src) when its WASM builds need them.
    local what=("$crate@$version")
    if [ -n "${crate_src:-}" ]; then
        what=(--path "$crate_src")
    fi
    CARGO_TARGET_DIR="$cache/target" cargo install --locked --force --root "$cache" "${what[@]}"
    for b in "$@"; do
        echo "$version" >"$cache/bin/.$b.version"
    done
    echo "$crate $version: built in $(( $(date +%s) - start )) s"
}

case "${1:-}" in
    omni-node)
        # Its one embedded runtime, frame-storage-access-test-runtime, serves only the `benchmark
        # storage` command: left out (SKIP_WASM_BUILD), which also spares a WASM build. (Built
        # without it, the WASM builder looked for that crate in a workspace that has none.)
        SKIP_WASM_BUILD=1 install_crate polkadot-omni-node "$omni_version" polkadot-omni-node
        ;;
    relay)
        # polkadot embeds the rococo runtime (zombienet's relay chain spec comes from
        # `polkadot build-spec --chain rococo-local`): its WASM build needs the WASM
        # toolchain of scripts/env.sh, and the crate's own lockfile, so the WASM builder is
        # pointed at the crate's unpacked sources.
        source scripts/env.sh
        src="$cache/src/polkadot-$relay_version"
        if [ ! -f "$src/Cargo.lock" ]; then
            mkdir -p "$cache/src"
            curl -fsSL "https://static.crates.io/crates/polkadot/polkadot-$relay_version.crate" |
                tar -xz -C "$cache/src"
        fi
        # Zombienet's relay chain is rococo-local: the westend runtime (native and WASM, a
        # third of the build) is left out. The lockfile lists optional crates whatever the
        # features, so it stays valid for --locked.
        sed -i '/^\[dependencies.polkadot-cli\]/,/^\]/{/"westend-native",/d}' "$src/Cargo.toml"
        export WASM_BUILD_WORKSPACE_HINT="$src"
        crate_src="$src" install_crate polkadot "$relay_version" \
            polkadot polkadot-prepare-worker polkadot-execute-worker
        ;;
    path)
        name=${2:?usage: scripts/polkadot-bins.sh path NAME}
        case "$name" in
            polkadot-omni-node) v=$omni_version ;;
            polkadot | polkadot-prepare-worker | polkadot-execute-worker) v=$relay_version ;;
            *) echo "unknown binary $name" >&2; exit 2 ;;
        esac
        if built "$name" "$v"; then echo "$cache/bin/$name"; else exit 1; fi
        ;;
    *)
        echo "usage: scripts/polkadot-bins.sh omni-node|relay|path NAME" >&2
        exit 2
        ;;
esac
