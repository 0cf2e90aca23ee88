#!/bin/bash
# Strips the CUDA test and benchmark binaries and packs them into gpu-bin/ (ignored by git),
# xz-compressed so that the carried tree stays under the device tool's 64 MiB.
#   pack-gpu-bin.sh        SGMV: tensor_api + sgmv-bench -> gpu-bin/sgmv-gpu.tar.xz
#   pack-gpu-bin.sh attn   paged attention: paged_attention + attn-bench + the kernels'
#                          fatbin (for cuobjdump) -> gpu-bin/attn-gpu.tar.xz
#   pack-gpu-bin.sh engine the worker's CUDA path: gpu_engine + engine-gpu-bench
#                          -> gpu-bin/engine-gpu.tar.xz (build them with
#                          `cargo test -p openledger-engine` and `cargo build -p openledger-bench`, both `--features cuda`, first)
#                          with gpu-run-engine.sh and gpu-run-decode.sh; BEFORE_BENCH=<an
#                          engine-gpu-bench built at the base commit> also packs that one
#                          (gpu-bin/engine-before.tar.xz) for gpu-run-decode.sh's before/after
#                          runs, and the decode anchor (../shared/bench/hf_decode_anchor.py,
#                          never committed) is copied beside them when it is there
set -euo pipefail
. "$HOME/.cache/openledger/cuda-env.sh"
ROOT=$(git rev-parse --show-toplevel)
T=$CARGO_TARGET_DIR/release
WHAT=${1:-sgmv}
case $WHAT in
  sgmv) TEST=tensor_api; BENCH=sgmv-bench; SCRIPTS="gpu-run.sh sgmv_baselines.py"; EXTRA="" ;;
  attn) TEST=paged_attention; BENCH=attn-bench; SCRIPTS="gpu-run-attn.sh attn_baseline.py"
        EXTRA=$(ls -t "$T"/build/openledger-kernels-*/out/paged_attention.fatbin | head -1) ;;
  engine) TEST=gpu_engine; BENCH=engine-gpu-bench
        SCRIPTS="../../bench/gpu-run-engine.sh ../../bench/gpu-run-decode.sh"
        EXTRA="$T/engine-logits"
        ANCHOR="$ROOT/../shared/bench/hf_decode_anchor.py"
        [ -f "$ANCHOR" ] && SCRIPTS="$SCRIPTS ../../../shared/bench/hf_decode_anchor.py" ;;
  *) echo "usage: $0 [sgmv|attn|engine]" >&2; exit 2 ;;
esac
TEST_BIN=$(ls -t "$T"/deps/$TEST-* | grep -v '\.d$' | head -1)
rm -rf /tmp/gpu-pack && mkdir -p /tmp/gpu-pack "$ROOT/gpu-bin"
cp "$TEST_BIN" "/tmp/gpu-pack/$TEST"
cp "$T/$BENCH" "/tmp/gpu-pack/$BENCH"
strip "/tmp/gpu-pack/$TEST" "/tmp/gpu-pack/$BENCH"
[ -n "$EXTRA" ] && cp "$EXTRA" /tmp/gpu-pack/
[ -f /tmp/gpu-pack/engine-logits ] && strip /tmp/gpu-pack/engine-logits
tar -cJf "$ROOT/gpu-bin/$WHAT-gpu.tar.xz" -C /tmp/gpu-pack .
if [ "$WHAT" = engine ] && [ -n "${BEFORE_BENCH:-}" ]; then
  rm -rf /tmp/gpu-pack-before && mkdir -p /tmp/gpu-pack-before
  cp "$BEFORE_BENCH" /tmp/gpu-pack-before/engine-gpu-bench && strip /tmp/gpu-pack-before/engine-gpu-bench
  tar -cJf "$ROOT/gpu-bin/engine-before.tar.xz" -C /tmp/gpu-pack-before .
fi
for s in $SCRIPTS; do cp "$ROOT/kernels/bench/$s" "$ROOT/gpu-bin/"; done
SCRIPTS=$(for s in $SCRIPTS; do basename "$s"; done)
# The device tool sends the checkout its session started in (the main worktree): mirror this
# pack there, leaving other packs in place.
MAIN=$(git -C "$ROOT" worktree list --porcelain | awk '/^worktree/{print $2; exit}')
if [ "$MAIN" != "$ROOT" ]; then
  mkdir -p "$MAIN/gpu-bin"
  cp "$ROOT/gpu-bin/$WHAT-gpu.tar.xz" "$MAIN/gpu-bin/"
  [ "$WHAT" = engine ] && [ -n "${BEFORE_BENCH:-}" ] && cp "$ROOT/gpu-bin/engine-before.tar.xz" "$MAIN/gpu-bin/"
  for s in $SCRIPTS; do cp "$ROOT/gpu-bin/$s" "$MAIN/gpu-bin/"; done
fi
ls -l /tmp/gpu-pack "$ROOT/gpu-bin"
