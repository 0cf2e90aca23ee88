#!/bin/bash
# vLLM's Triton LoRA kernels for the SGMV comparison (issue 21 item 2), never committed: the
# wheel of VLLM_VERSION (default 0.33.0) from PyPI, and out of it only the five files of
# vllm/lora/ops/triton_ops that lora_shrink and lora_expand need, into gpu-bin/vllm_lora
# (ignored by git). vllm_lora_baseline.py runs them on the GPU machine.
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
VERSION=${VLLM_VERSION:-0.33.0}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/openledger/vllm-$VERSION
mkdir -p "$CACHE"
ls "$CACHE"/vllm-"$VERSION"-*.whl >/dev/null 2>&1 \
  || python3 -m pip download --quiet --no-deps "vllm==$VERSION" -d "$CACHE"
WHEEL=$(ls "$CACHE"/vllm-"$VERSION"-*.whl | head -1)
DEST="$ROOT/gpu-bin/vllm_lora"
rm -rf "$DEST" && mkdir -p "$DEST"
python3 - "$WHEEL" "$DEST" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for f in ("kernel_utils", "lora_expand_op", "lora_shrink_op", "lora_kernel_metadata", "utils"):
        z.extract(f"vllm/lora/ops/triton_ops/{f}.py", dest)
PY
echo "$WHEEL -> $DEST ($(ls "$DEST/vllm/lora/ops/triton_ops" | tr '\n' ' '))"
