#!/bin/bash
# One device call: GPU tests (v3 with its own choice of variant, with each variant forced,
# and v2 with OPENLEDGER_SGMV_KERNEL=two-stage), compute-sanitizer memcheck + racecheck, benchmark
# of both versions, PyTorch baselines, and (NCU=1) Nsight Compute on a few configurations.
# Run from the repository root with gpu-bin/ carried (kernels/bench/pack-gpu-bin.sh fills
# it). Writes under $OUT (the device tool returns at most eight files): checks.log,
# bench.log, ours.csv, ours_v2.csv, ours_<variant>.csv, baselines.log, table.md, ncu.txt.
# Knobs: SKIP_V2=1 (no v2 tests or bench), SKIP_BASELINES=1, NCU=1, BENCH_VARIANTS="cluster
# solo" (also bench v3 with each of these variants forced).
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/gb
tar -xJf gpu-bin/sgmv-gpu.tar.xz -C /tmp/gb || exit 1
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
CHECKS="$OUT/checks.log"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee "$CHECKS"
echo "== tests (v3)" | tee -a "$CHECKS"
timeout 120 /tmp/gb/tensor_api --test-threads=1 2>&1 | tee -a "$CHECKS" | grep -E "^test |test result|panicked|relative|Error|SEED"
for v in cluster pair solo; do
  echo "== tests (v3, variant $v)" | tee -a "$CHECKS"
  OPENLEDGER_SGMV_VARIANT=$v timeout 120 /tmp/gb/tensor_api --test-threads=1 2>&1 | tee -a "$CHECKS" | grep -E "test result|panicked|relative|Error"
  SGMV_SEED=7 SGMV_BITS_DIR=/tmp/bits/$v OPENLEDGER_SGMV_VARIANT=$v timeout 60 /tmp/gb/tensor_api --test-threads=1 a_request_gets >/dev/null 2>&1
done
echo "== the same bits under every variant (a request alone and batched, ranks 8, 13, 64)" | tee -a "$CHECKS"
for v in pair solo; do
  for f in /tmp/bits/cluster/*.bin; do
    cmp "$f" "/tmp/bits/$v/$(basename "$f")" >/dev/null 2>&1 && echo "cluster = $v: $(basename "$f")" || echo "DIFFERENT: cluster vs $v: $(basename "$f")"
  done
done | tee -a "$CHECKS" | grep -c "^cluster =" | sed 's/$/ files equal/'
grep DIFFERENT "$CHECKS"
if [ -z "$SKIP_V2" ]; then
  echo "== tests (v2)" | tee -a "$CHECKS"
  OPENLEDGER_SGMV_KERNEL=two-stage timeout 60 /tmp/gb/tensor_api --test-threads=1 2>&1 | tee -a "$CHECKS" | grep -E "test result|panicked|relative|Error"
fi
echo "== memcheck" | tee -a "$CHECKS"
SGMV_CASES=3 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/gb/tensor_api --test-threads=1 2>&1 | tee -a "$CHECKS" | grep -E "ERROR SUMMARY|test result|Invalid|error" | head -20
for v in pair solo; do
  OPENLEDGER_SGMV_VARIANT=$v SGMV_CASES=3 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/gb/tensor_api --test-threads=1 lora_delta 2>&1 | tee -a "$CHECKS" | grep -E "ERROR SUMMARY|test result|Invalid|error" | head -20
done
echo "== racecheck" | tee -a "$CHECKS"
for v in cluster pair solo; do
  OPENLEDGER_SGMV_VARIANT=$v SGMV_CASES=2 timeout 150 compute-sanitizer --tool racecheck --error-exitcode 3 /tmp/gb/tensor_api --test-threads=1 lora_delta_matches 2>&1 | tee -a "$CHECKS" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|hazard|error" | head -20
done
echo "== bench v3"; OPENLEDGER_SGMV_DEBUG=1 timeout 150 /tmp/gb/sgmv-bench "$OUT/ours.csv" > "$OUT/bench.log" 2>&1; tail -2 "$OUT/bench.log"
for v in $BENCH_VARIANTS; do
  echo "== bench v3, variant $v"; echo "== variant $v" >> "$OUT/bench.log"
  OPENLEDGER_SGMV_VARIANT=$v timeout 150 /tmp/gb/sgmv-bench "$OUT/ours_$v.csv" >> "$OUT/bench.log" 2>&1; tail -1 "$OUT/bench.log"
done
V2CSV=""
if [ -z "$SKIP_V2" ]; then
  echo "== bench v2"; echo "== v2" >> "$OUT/bench.log"; OPENLEDGER_SGMV_KERNEL=two-stage timeout 100 /tmp/gb/sgmv-bench "$OUT/ours_v2.csv" >> "$OUT/bench.log" 2>&1; tail -1 "$OUT/bench.log"
  V2CSV="$OUT/ours_v2.csv"
fi
if [ -n "$NCU" ]; then
  echo "== ncu" | tee "$OUT/ncu.txt"
  for cfg in ${NCU_CONFIGS:-4096,4096,64,64,64 4096,14336,64,256,64 4096,4096,8,1,1 14336,4096,64,1024,1}; do
    echo "=== $cfg" >> "$OUT/ncu.txt"
    timeout 60 ncu --clock-control none --kernel-name regex:sgmv_fused --launch-skip 2 --launch-count 1 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy \
      --section SchedulerStats --section WarpStateStats \
      /tmp/gb/sgmv-bench /tmp/ncu.csv --only "$cfg" >> "$OUT/ncu.txt" 2>&1
  done
  grep -E "^=== |Duration|Memory Throughput|DRAM Throughput|Registers|Achieved Occupancy|Theoretical Occupancy|Stall|No Eligible" "$OUT/ncu.txt" | head -60
fi
if [ -z "$SKIP_BASELINES" ]; then
  echo "== baselines"; PYTHONUNBUFFERED=1 timeout ${BASELINE_TIMEOUT:-170} python3 gpu-bin/sgmv_baselines.py "$OUT/ours.csv" "$OUT/table.md" $V2CSV > "$OUT/baselines.log" 2>&1; tail -3 "$OUT/baselines.log"
fi
