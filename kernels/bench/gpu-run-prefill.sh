#!/bin/bash
# Issue 21 item 3 on the GPU, one device call: the fused causal prefill attention
# (kernels/cuda/prefill_attention.cu) and the engine's prefill with it. Run from the
# repository root with gpu-bin/ carried (`kernels/bench/pack-gpu-bin.sh prefill` fills it:
# prefill-gpu.tar.xz, this script, prefill_attn_baseline.py, prefill_profile.py). In order,
# each step cut short before END_S (default 520 s) so the call ends by itself:
#   1. the kernel's tests (CPU and CUDA) against the f64 reference;
#   5. engine-gpu-bench --prefill-only (32 layers): materialized, fused, materialized, fused,
#      each with the copy bandwidth, the 8192^3 GEMM rate, the prefill's GEMMs alone and its
#      FLOP floor in the same process;
#   3. the engine's GPU tests (gpu_engine, logits against the CPU among them);
#   2. prefill-attn-bench and the PyTorch SDPA baselines on the same shapes (table.md);
#   compute-sanitizer memcheck and racecheck on the kernel's tests;
#   4. Nsight Compute on an 8-layer prefill, the materialized-scores path
#      (OPENLEDGER_PREFILL_ATTENTION=materialized) and the fused one: per kernel class;
#   memcheck of the engine's logits test.
# Knobs: SKIP_KERNEL=1 leaves out the kernel's tests, benchmark, baselines and sanitizers;
# RUNS (default "materialized1 fused1 materialized2 fused2") and PREFILL_RUNS (runs per
# configuration, the first a warm-up; default 6) for step 5; NCU_MODES (default
# "materialized fused"); ENGINE_SANITIZE (default cuda_logits_match_cpu: the engine tests
# run under memcheck).
# Writes under $OUT (at most 8 files come back): checks.log, ours.csv, table.md,
# baselines.log, tests.log, profile.md, prefill.jsonl, bench.log.
set -o pipefail
OUT=${OUT:-/tmp/out}
T0=$(date +%s)
left() { local l=$(( T0 + ${END_S:-520} - $(date +%s) - 5 )); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }
mkdir -p "$OUT" /tmp/gp
tar -xJf gpu-bin/prefill-gpu.tar.xz -C /tmp/gp || exit 1
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
CHECKS="$OUT/checks.log"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee "$CHECKS"
date -u +%FT%TZ | tee -a "$CHECKS"

if [ -z "${SKIP_KERNEL:-}" ]; then
echo "== 1. kernel tests $(date -u +%T)" | tee -a "$CHECKS"
timeout $(left 60) /tmp/gp/prefill_attention --test-threads=2 --nocapture 2>&1 | tee -a "$CHECKS" \
  | grep -E "^test |test result|panicked|relative|SEED" | head -40
fi
BENCH="/tmp/gp/engine-gpu-bench --prefill-only --batch 1 --adapters 1 --all7-adapters 0"
echo "== 5. prefill, 32 layers $(date -u +%T)" | tee -a "$OUT/bench.log"
for run in ${RUNS:-materialized1 fused1 materialized2 fused2}; do
  v=; case $run in materialized*) v=materialized ;; esac
  OPENLEDGER_PREFILL_ATTENTION=$v timeout $(left 45) $BENCH --prefill-runs ${PREFILL_RUNS:-6} 2>> "$OUT/bench.log" \
    | sed "s/^{/{\"run\":\"$run\",/" | tee -a "$OUT/prefill.jsonl" | grep -E '"copy"|"prefill"|"gemm"|floor'
done
grep -h '"prefill_gemm"' "$OUT/prefill.jsonl" | head -4
echo "== 3. engine GPU tests $(date -u +%T)" | tee -a "$OUT/tests.log"
timeout $(left 80) /tmp/gp/gpu_engine --test-threads=1 --nocapture 2>&1 | tee -a "$OUT/tests.log" \
  | grep -E "^test |test result|panicked|rms|differ" | head -40
if [ -z "${SKIP_KERNEL:-}" ]; then
echo "== 2. kernel bench + SDPA baselines $(date -u +%T)" | tee -a "$CHECKS"
timeout $(left 40) /tmp/gp/prefill-attn-bench "$OUT/ours.csv" 2>&1 | tail -12
PYTHONUNBUFFERED=1 timeout $(left 100) python3 gpu-bin/prefill_attn_baseline.py "$OUT/ours.csv" "$OUT/table.md" \
  > "$OUT/baselines.log" 2>&1
echo "baseline exit $?"; cat "$OUT/table.md" 2>/dev/null || tail -5 "$OUT/baselines.log"

echo "== memcheck $(date -u +%T)" | tee -a "$CHECKS"
ATTN_CASES=2 timeout $(left 100) compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/gp/prefill_attention \
  --test-threads=1 2>&1 | tee -a "$CHECKS" | grep -E "ERROR SUMMARY|test result|Invalid|panicked" | head -12
echo "== racecheck $(date -u +%T)" | tee -a "$CHECKS"
ATTN_CASES=1 timeout $(left 60) compute-sanitizer --tool racecheck --error-exitcode 3 /tmp/gp/prefill_attention \
  --test-threads=1 bf16_matches_reference 2>&1 | tee -a "$CHECKS" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|hazard" | head -12

fi
echo "== 4. ncu, 8 layers $(date -u +%T)" | tee -a "$OUT/bench.log"
for mode in ${NCU_MODES:-materialized fused}; do
  v=; [ $mode = materialized ] && v=materialized
  OPENLEDGER_PREFILL_ATTENTION=$v timeout $(left 70) ncu --metrics gpu__time_duration.sum --csv --page raw \
    --clock-control none --cache-control none $BENCH --layers 8 --prefill-runs 2 --mark-runs \
    > /tmp/gp/ncu-$mode.out 2>> "$OUT/bench.log"
  echo "ncu $mode exit $?" | tee -a "$OUT/bench.log"
  grep '^"' /tmp/gp/ncu-$mode.out > /tmp/gp/ncu-$mode.csv
  python3 gpu-bin/prefill_profile.py /tmp/gp/ncu-$mode.csv "$mode" 8 32 >> "$OUT/profile.md" 2>&1
done
grep -E '^(==|--)|^\| (gemm|prefill|softmax|copy|gather|element|fused|sgmv)' "$OUT/profile.md" | head -40

echo "== memcheck, engine logits test $(date -u +%T)" | tee -a "$OUT/tests.log"
for t in ${ENGINE_SANITIZE:-cuda_logits_match_cpu}; do
timeout $(left 50) compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/gp/gpu_engine --test-threads=1 \
  $t 2>&1 | tee -a "$OUT/tests.log" | grep -E "ERROR SUMMARY|test result|Invalid" | head -8
done

echo "== done $(date -u +%T), $(( $(date +%s) - T0 )) s" | tee -a "$CHECKS"
