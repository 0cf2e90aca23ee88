#!/bin/bash
# One device call: GPU tests (both kernel versions), compute-sanitizer memcheck + racecheck,
# benchmark (both versions), PyTorch baselines. Run from the repository root with gpu-bin/
# carried (kernels/bench/pack-gpu-bin.sh fills it). Writes six files under $OUT (the device
# tool returns at most eight): checks.log, bench.log, ours.csv, ours_v1.csv, baselines.log,
# table.md.
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/gb
tar -xJf gpu-bin/sgmv-gpu.tar.xz -C /tmp/gb || exit 1
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
CHECKS="$OUT/checks.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$CHECKS"
echo "== tests (v2)" | tee -a "$CHECKS"
timeout 90 /tmp/gb/tensor_api --test-threads=1 2>&1 | tee -a "$CHECKS" | grep -E "^test |test result|panicked|relative|Error"
echo "== tests (v1)" | tee -a "$CHECKS"
OPENLEDGER_SGMV_KERNEL=v1 timeout 60 /tmp/gb/tensor_api --test-threads=1 2>&1 | tee -a "$CHECKS" | grep -E "test result|panicked|relative|Error"
echo "== memcheck" | tee -a "$CHECKS"
SGMV_CASES=3 timeout 100 compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/gb/tensor_api --test-threads=1 2>&1 | tee -a "$CHECKS" | grep -E "ERROR SUMMARY|test result|Invalid|error" | head -20
echo "== racecheck" | tee -a "$CHECKS"
SGMV_CASES=2 timeout 100 compute-sanitizer --tool racecheck --error-exitcode 3 /tmp/gb/tensor_api --test-threads=1 lora_delta_matches 2>&1 | tee -a "$CHECKS" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|hazard|error" | head -20
echo "== bench v2"; timeout 100 /tmp/gb/sgmv-bench "$OUT/ours.csv" > "$OUT/bench.log" 2>&1; tail -2 "$OUT/bench.log"
echo "== bench v1"; echo "== v1" >> "$OUT/bench.log"; OPENLEDGER_SGMV_KERNEL=v1 timeout 80 /tmp/gb/sgmv-bench "$OUT/ours_v1.csv" >> "$OUT/bench.log" 2>&1; tail -1 "$OUT/bench.log"
echo "== baselines"; PYTHONUNBUFFERED=1 timeout ${BASELINE_TIMEOUT:-170} python3 gpu-bin/sgmv_baselines.py "$OUT/ours.csv" "$OUT/table.md" "$OUT/ours_v1.csv" > "$OUT/baselines.log" 2>&1; tail -3 "$OUT/baselines.log"
