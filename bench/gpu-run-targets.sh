#!/bin/bash
# Issue 21 item 6, every target in one device call (docs/benchmarks.md, "Issue 21's targets
# in one run"). Run from the repository root with gpu-bin/ carried: targets-gpu.tar.xz
# (`kernels/bench/pack-gpu-bin.sh targets`: gpu_engine + engine-gpu-bench), this script and
# hf_decode_anchor.py (../shared/bench, never committed). In order, each step cut short
# before END_S (default 575 s) so that the call ends by itself:
#   1. the model step (engine-gpu-bench --no-engine --graphs: decode at batch 1/8/32/64 with
#      0 and 32 adapters, eager and graphed, the copy bandwidth of the same process), twice;
#   2. the prefill of 512 tokens (--prefill-only: beside it the 8192^3 GEMM rate its FLOP
#      floor is taken at, and the prefill's GEMMs alone), twice;
#   3. the engine's decode (--engine-only: scheduler, sampling, streaming; graphs on,
#      activation commitments on), twice; after the two rounds once more without
#      commitments (adapter steps that compute deltas apart stay eager), and once without
#      decode steps launched ahead (--no-overlap; the other engine runs overlap);
#   4. the torch.compile decode anchor at every batch size (static cache, CUDA graphs);
#   then targets.md: each target of item 6 against what this call measured.
# SKIP_TESTS unset: first the engine's GPU tests and memcheck on the fused layer steps
# (TESTS_ONLY=1: nothing else).
# Writes under $OUT: targets.jsonl (every measurement, tagged "run"), anchor.jsonl,
# bench.log, tests.log, targets.md.
set -o pipefail
DEFAULT_END_S=575
LEFT_MARGIN=10
. kernels/bench/gpu-env.sh
mkdir -p /tmp/gt
tar -xJf gpu-bin/targets-gpu.tar.xz -C /tmp/gt || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee -a "$OUT/tests.log"
date -u +%FT%TZ | tee -a "$OUT/tests.log"
if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== engine GPU tests $(date -u +%T)" | tee -a "$OUT/tests.log"
  timeout $(left 150) /tmp/gt/gpu_engine --test-threads=1 --nocapture 2>&1 | tee -a "$OUT/tests.log" \
    | grep -E "^test |test result|panicked|differ|rms" | head -60
  for t in ${SANITIZE_TESTS:-cuda_fused_layer_steps}; do
    timeout $(left 90) compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/gt/gpu_engine \
      --test-threads=1 $t 2>&1 | tee -a "$OUT/tests.log" | grep -E "ERROR SUMMARY|test result|Invalid" | head -8
  done
fi
[ -n "${TESTS_ONLY:-}" ] && exit 0
bench() { # name args...: the JSON lines, tagged with the run's name
  local name=$1; shift
  echo "== $name $(date -u +%T)" | tee -a "$OUT/bench.log"
  timeout $(left ${BENCH_TIMEOUT:-120}) /tmp/gt/engine-gpu-bench "$@" 2>> "$OUT/bench.log" \
    | sed "s/^{/{\"run\":\"$name\",/" >> "$OUT/targets.jsonl"
  echo "exit $?" | tee -a "$OUT/bench.log"
}
for r in 1 2; do
  bench step$r --no-engine --batch 1,8,32,64 --adapters 0,32 --graphs
  bench prefill$r --prefill-only --batch 1 --adapters 1 --all7-adapters 0
  OPENLEDGER_CUDA_GRAPHS=1 bench engine$r --engine-only --engine-batch 1,8,32,64
done
OPENLEDGER_CUDA_GRAPHS=1 bench engine_nocommit --engine-only --engine-batch 1,8,32,64 --no-commit
OPENLEDGER_CUDA_GRAPHS=1 bench engine_nooverlap --engine-only --engine-batch 1,8,32,64 --no-overlap
if [ -f gpu-bin/hf_decode_anchor.py ]; then
  echo "== anchor $(date -u +%T)" | tee -a "$OUT/bench.log"
  a_left=$(left 330); a_dl=$(( a_left - 90 < 240 ? a_left - 90 : 240 ))
  PYTHONUNBUFFERED=1 timeout $a_left python3 gpu-bin/hf_decode_anchor.py "$OUT/anchor.jsonl" \
    --batches 1,8,32,64 --modes compile --deadline $a_dl >> "$OUT/bench.log" 2>&1
  echo "anchor exit $?" | tee -a "$OUT/bench.log"
fi
python3 bench/scripts/targets_table.py "$OUT" | tee "$OUT/targets.md"
echo "== done $(date -u +%T), $(( $(date +%s) - T0 )) s"
