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
#   pack-gpu-bin.sh verify issue 23 on the GPU: gpu_engine + engine-gpu-bench + verify-bench
#                          -> gpu-bin/verify-gpu.tar.xz (one xz stream with a dictionary
#                          spanning the binaries, which share most of their code), and the
#                          model (MODEL, default scripts/fetch-model.sh's) split in two parts,
#                          the first filling what call 1 may still carry (model.part1,
#                          model.part2, model.sha256), with gpu-run-verify.sh
#   pack-gpu-bin.sh cold   issue 21 item 4 (cold adapters): gpu_engine + engine-gpu-bench
#                          (+ BEFORE_BENCH, an engine-gpu-bench of the base commit, as
#                          engine-gpu-bench-before) -> gpu-bin/cold-gpu.tar.xz, one xz stream,
#                          with gpu-run-cold.sh
#   pack-gpu-bin.sh graphs issue 21, decode graphs with adapters and the parallel adapter read:
#                          gpu_engine + engine-gpu-bench -> gpu-bin/graphs-gpu.tar.xz,
#                          one xz stream, with gpu-run-graphs.sh, gpu-run-decode.sh,
#                          gpu-run-cold.sh and the decode anchor (as for engine)
#   pack-gpu-bin.sh prefill issue 21 item 3, the fused prefill attention: prefill_attention
#                          + gpu_engine + prefill-attn-bench + engine-gpu-bench
#                          -> gpu-bin/prefill-gpu.tar.xz, one xz stream, with
#                          gpu-run-prefill.sh, prefill_attn_baseline.py, prefill_profile.py
#   pack-gpu-bin.sh targets issue 21 item 6, every target in one call: gpu_engine +
#                          engine-gpu-bench -> gpu-bin/targets-gpu.tar.xz, one xz stream, with
#                          the decode anchor (as for engine); bench/gpu-run-targets.sh runs it
#   pack-gpu-bin.sh density issue 21 item 5 (adapter density): density-bench
#                          -> gpu-bin/density-gpu.tar.xz, with gpu-run-density.sh
#   pack-gpu-bin.sh layered issue 21 item 5, adapter copies cut by layer: gpu_engine +
#                          density-bench -> gpu-bin/layered-gpu.tar.xz, one xz stream, with
#                          gpu-run-layered.sh and gpu-run-density.sh
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
  verify) TEST=gpu_engine; BENCH="engine-gpu-bench verify-bench"
        SCRIPTS="../../bench/gpu-run-verify.sh"; EXTRA="" ;;
  cold) TEST=gpu_engine; BENCH=engine-gpu-bench
        SCRIPTS="../../bench/gpu-run-cold.sh"; EXTRA="" ;;
  graphs) TEST=gpu_engine; BENCH=engine-gpu-bench; EXTRA=""
        SCRIPTS="../../bench/gpu-run-graphs.sh ../../bench/gpu-run-decode.sh ../../bench/gpu-run-cold.sh"
        ANCHOR="$ROOT/../shared/bench/hf_decode_anchor.py"
        [ -f "$ANCHOR" ] && SCRIPTS="$SCRIPTS ../../../shared/bench/hf_decode_anchor.py" ;;
  prefill) TEST="prefill_attention gpu_engine"; BENCH="prefill-attn-bench engine-gpu-bench"; EXTRA=""
        SCRIPTS="gpu-run-prefill.sh prefill_attn_baseline.py prefill_profile.py" ;;
  targets) TEST=gpu_engine; BENCH=engine-gpu-bench; EXTRA=""; SCRIPTS=""
        ANCHOR="$ROOT/../shared/bench/hf_decode_anchor.py"
        [ -f "$ANCHOR" ] && SCRIPTS="../../../shared/bench/hf_decode_anchor.py" ;;
  density) TEST=""; BENCH=density-bench; SCRIPTS="../../bench/gpu-run-density.sh"; EXTRA="" ;;
  layered) TEST=gpu_engine; BENCH=density-bench; EXTRA=""
        SCRIPTS="../../bench/gpu-run-density.sh ../../bench/gpu-run-layered.sh" ;;
  *) echo "usage: $0 [sgmv|attn|engine|verify|cold|graphs|prefill|targets|density|layered]" >&2; exit 2 ;;
esac
rm -rf /tmp/gpu-pack && mkdir -p /tmp/gpu-pack "$ROOT/gpu-bin"
for t in $TEST; do
  TEST_BIN=$(ls -t "$T"/deps/$t-* | grep -v '\.d$' | head -1)
  cp "$TEST_BIN" "/tmp/gpu-pack/$t"
  strip "/tmp/gpu-pack/$t"
done
for b in $BENCH; do cp "$T/$b" "/tmp/gpu-pack/$b" && strip "/tmp/gpu-pack/$b"; done
[ -n "$EXTRA" ] && cp "$EXTRA" /tmp/gpu-pack/
[ -f /tmp/gpu-pack/engine-logits ] && strip /tmp/gpu-pack/engine-logits
if [ "$WHAT" = cold ] && [ -n "${BEFORE_BENCH:-}" ]; then
  cp "$BEFORE_BENCH" /tmp/gpu-pack/engine-gpu-bench-before && strip /tmp/gpu-pack/engine-gpu-bench-before
fi
if [ "$WHAT" = verify ] || [ "$WHAT" = cold ] || [ "$WHAT" = graphs ] || [ "$WHAT" = prefill ] || [ "$WHAT" = targets ] || [ "$WHAT" = layered ]; then
  # The binaries share candle, cudarc and the kernels: a dictionary that spans them all
  # stores that code once.
  tar -cf - -C /tmp/gpu-pack . | xz -T1 --lzma2=preset=9,dict=256MiB > "$ROOT/gpu-bin/$WHAT-gpu.tar.xz"
fi
if [ "$WHAT" = verify ]; then
  MODEL=${MODEL:-$("$ROOT/scripts/fetch-model.sh")}
  # A call carries at most 64 MiB with the tracked tree (~6.5 MiB): the first part takes
  # what the binaries leave of 56 MiB, the second the rest (it must fit alone).
  PART1=$(( 56 * 1024 * 1024 - $(stat -c %s "$ROOT/gpu-bin/$WHAT-gpu.tar.xz") ))
  head -c "$PART1" "$MODEL" > "$ROOT/gpu-bin/model.part1"
  tail -c +$(( PART1 + 1 )) "$MODEL" > "$ROOT/gpu-bin/model.part2"
  sha256sum "$MODEL" > "$ROOT/gpu-bin/model.sha256"
  [ "$(stat -c %s "$ROOT/gpu-bin/model.part2")" -le $(( 58 * 1024 * 1024 )) ] \
    || { echo "the model's second part is over 58 MiB: it does not fit two calls" >&2; exit 1; }
elif [ "$WHAT" != cold ] && [ "$WHAT" != graphs ] && [ "$WHAT" != prefill ] && [ "$WHAT" != targets ] && [ "$WHAT" != layered ]; then
  tar -cJf "$ROOT/gpu-bin/$WHAT-gpu.tar.xz" -C /tmp/gpu-pack .
fi
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
  [ "$WHAT" = verify ] && cp "$ROOT"/gpu-bin/model.{part1,part2,sha256} "$MAIN/gpu-bin/"
  [ "$WHAT" = engine ] && [ -n "${BEFORE_BENCH:-}" ] && cp "$ROOT/gpu-bin/engine-before.tar.xz" "$MAIN/gpu-bin/"
  for s in $SCRIPTS; do cp "$ROOT/gpu-bin/$s" "$MAIN/gpu-bin/"; done
fi
ls -l /tmp/gpu-pack "$ROOT/gpu-bin"
