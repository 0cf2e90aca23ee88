#!/bin/bash
# Strips the CUDA test and benchmark binaries and packs them into gpu-bin/ (ignored by git),
# xz-compressed so that the carried tree stays under the device tool's 64 MiB.
set -euo pipefail
. "$HOME/.cache/openledger/cuda-env.sh"
ROOT=$(git rev-parse --show-toplevel)
T=$CARGO_TARGET_DIR/release
TEST=$(ls -t "$T"/deps/tensor_api-* | grep -v '\.d$' | head -1)
rm -rf /tmp/gpu-pack && mkdir -p /tmp/gpu-pack "$ROOT/gpu-bin"
cp "$TEST" /tmp/gpu-pack/tensor_api
cp "$T/sgmv-bench" /tmp/gpu-pack/sgmv-bench
strip /tmp/gpu-pack/*
tar -cJf "$ROOT/gpu-bin/sgmv-gpu.tar.xz" -C /tmp/gpu-pack tensor_api sgmv-bench
cp "$ROOT/kernels/bench/gpu-run.sh" "$ROOT/kernels/bench/sgmv_baselines.py" "$ROOT/gpu-bin/"
# The device tool sends the checkout its session started in (the main worktree): mirror there.
MAIN=$(git -C "$ROOT" worktree list --porcelain | awk '/^worktree/{print $2; exit}')
if [ "$MAIN" != "$ROOT" ]; then rm -rf "$MAIN/gpu-bin" && cp -r "$ROOT/gpu-bin" "$MAIN/gpu-bin"; fi
ls -l /tmp/gpu-pack "$ROOT/gpu-bin"
