#!/bin/bash
# One device call for paged decode attention: GPU tests (CPU and CUDA; current and first
# kernel version), compute-sanitizer memcheck + racecheck, the benchmark (current kernel,
# current with 128- and 256-position partitions instead of the default 512, first version),
# the PyTorch baselines, and the SASS summary of the Llama-shape kernel (in checks.log). Run
# from the repository root with gpu-bin/ carried (`kernels/bench/pack-gpu-bin.sh attn` fills
# it). Writes under $OUT (8 files, the device tool's limit): checks.log, bench.log, ours.csv,
# ours_p128.csv, ours_p256.csv, ours_v1.csv, baselines.log, table.md.
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/ga
tar -xJf gpu-bin/attn-gpu.tar.xz -C /tmp/ga || exit 1
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
CHECKS="$OUT/checks.log"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee "$CHECKS"
echo "== tests" | tee -a "$CHECKS"
timeout ${TEST_TIMEOUT:-120} /tmp/ga/paged_attention --test-threads=4 2>&1 | tee -a "$CHECKS" | grep -E "^test |test result|panicked|relative|error|SEED"
for P in 128 256; do
  echo "== tests, partition $P" | tee -a "$CHECKS"
  OPENLEDGER_ATTN_PARTITION=$P timeout ${TEST_TIMEOUT:-120} /tmp/ga/paged_attention --test-threads=4 2>&1 | tee -a "$CHECKS" | grep -E "test result|panicked|relative|error"
done
echo "== memcheck" | tee -a "$CHECKS"
ATTN_CASES=3 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/ga/paged_attention --test-threads=1 2>&1 | tee -a "$CHECKS" | grep -E "ERROR SUMMARY|test result|Invalid|error" | head -20
echo "== racecheck" | tee -a "$CHECKS"
ATTN_CASES=2 timeout 120 compute-sanitizer --tool racecheck --error-exitcode 3 /tmp/ga/paged_attention --test-threads=1 matches_reference 2>&1 | tee -a "$CHECKS" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|hazard|error" | head -20
cuobjdump -sass -fun paged_attn_bf16_hd128_g4 /tmp/ga/paged_attention.fatbin > /tmp/ga/sass.txt 2>&1
{ echo "paged_attn_bf16_hd128_g4 instruction mix:"; grep -oE "^\s+/\*[0-9a-f]+\*/\s+[A-Z0-9.]+" /tmp/ga/sass.txt | awk '{print $2}' | sort | uniq -c | sort -rn | head -40; } >> "$CHECKS"
echo "== bench"; timeout ${BENCH_TIMEOUT:-150} /tmp/ga/attn-bench "$OUT/ours.csv" > "$OUT/bench.log" 2>&1; tail -3 "$OUT/bench.log"
echo "== bench, partition 128"; echo "== partition 128" >> "$OUT/bench.log"
OPENLEDGER_ATTN_PARTITION=128 timeout ${BENCH_TIMEOUT:-150} /tmp/ga/attn-bench "$OUT/ours_p128.csv" >> "$OUT/bench.log" 2>&1; tail -1 "$OUT/bench.log"
echo "== bench, partition 256"; echo "== partition 256" >> "$OUT/bench.log"
OPENLEDGER_ATTN_PARTITION=256 timeout ${BENCH_TIMEOUT:-150} /tmp/ga/attn-bench "$OUT/ours_p256.csv" >> "$OUT/bench.log" 2>&1; tail -1 "$OUT/bench.log"
echo "== baselines"; PYTHONUNBUFFERED=1 timeout ${BASELINE_TIMEOUT:-170} python3 gpu-bin/attn_baseline.py "$OUT/ours.csv" "$OUT/table.md" "$OUT/ours_p128.csv" "partition 128" "$OUT/ours_p256.csv" "partition 256" > "$OUT/baselines.log" 2>&1; tail -4 "$OUT/baselines.log"
