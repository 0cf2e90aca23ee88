#!/bin/bash
# Issue 21 item 2: the split SGMV launch (the shrink alone, then the "cols" expand spread over
# a tile's columns, launched as the shrink's programmatic dependent) against the fused one,
# in one device call. Run from the repository root with gpu-bin/sgmv-gpu.tar.xz
# (`kernels/bench/pack-gpu-bin.sh sgmv`) and gpu-bin/vllm_lora (`kernels/bench/fetch-vllm-lora.sh`)
# carried. In order, each step cut short before END_S (default 560 s):
#   1. tensor_api with the split forced (OPENLEDGER_SGMV_SPLIT=1) and with the cost model's
#      choice (=auto); the batch-invariance test's bits under split 0 / 1 x variant cluster / solo,
#      compared file by file; memcheck and racecheck with the split forced;
#   2. sgmv-bench with the split forced off, then on (ours_fused.csv, ours_split.csv), then
#      with the cost model's choice (OPENLEDGER_SGMV_SPLIT=auto: ours.csv);
#   3. vLLM's lora_shrink + lora_expand on the same shapes (vllm_table.md, against the fused
#      times), then split_table.md: each shape's fused, split, chosen and vLLM times.
# SKIP_TESTS=1 skips step 1, SKIP_RACECHECK=1 the racecheck, SKIP_VLLM=1 step 3's vLLM run;
# BENCH (default "0 1 auto") names the sgmv-bench runs (0: fused, 1: split, auto). Writes
# under $OUT: checks.log, bench.log, the csv files, vllm_table.md, split_table.md.
set -o pipefail
. kernels/bench/gpu-env.sh
mkdir -p /tmp/gs
tar -xJf gpu-bin/sgmv-gpu.tar.xz -C /tmp/gs || exit 1
CHECKS="$OUT/checks.log"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$CHECKS"
if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== tests, split forced $(date -u +%T)" | tee -a "$CHECKS"
  OPENLEDGER_SGMV_SPLIT=1 timeout $(left 120) /tmp/gs/tensor_api --test-threads=1 2>&1 | tee -a "$CHECKS" \
    | grep -E "test result|panicked|relative|Error"
  echo "== tests, the cost model's choice" | tee -a "$CHECKS"
  OPENLEDGER_SGMV_SPLIT=auto timeout $(left 120) /tmp/gs/tensor_api --test-threads=1 2>&1 | tee -a "$CHECKS" | grep -E "test result|panicked|relative|Error"
  for s in 0 1; do
    for v in cluster solo; do
      SGMV_SEED=7 SGMV_BITS_DIR=/tmp/bits/$s-$v OPENLEDGER_SGMV_SPLIT=$s OPENLEDGER_SGMV_VARIANT=$v \
        timeout $(left 60) /tmp/gs/tensor_api --test-threads=1 a_request_gets >/dev/null 2>&1 || echo "FAILED: split $s variant $v"
    done
  done | tee -a "$CHECKS"
  echo "== the same bits fused and split (a request alone and batched, ranks 8, 13, 64)" | tee -a "$CHECKS"
  for d in 0-solo 1-cluster 1-solo; do
    for f in /tmp/bits/0-cluster/*.bin; do
      cmp "$f" "/tmp/bits/$d/$(basename "$f")" >/dev/null 2>&1 && echo "0-cluster = $d: $(basename "$f")" \
        || echo "DIFFERENT: 0-cluster vs $d: $(basename "$f")"
    done
  done | tee -a "$CHECKS" | grep -c "^0-cluster =" | sed 's/$/ files equal (of 18)/'
  grep DIFFERENT "$CHECKS"
  echo "== memcheck, racecheck (split forced)" | tee -a "$CHECKS"
  OPENLEDGER_SGMV_SPLIT=1 SGMV_CASES=3 timeout $(left 150) compute-sanitizer --tool memcheck --error-exitcode 3 \
    /tmp/gs/tensor_api --test-threads=1 lora_delta 2>&1 | tee -a "$CHECKS" | grep -E "ERROR SUMMARY|test result|Invalid|error" | head -20
  [ -z "${SKIP_RACECHECK:-}" ] && OPENLEDGER_SGMV_SPLIT=1 SGMV_CASES=2 timeout $(left 150) compute-sanitizer --tool racecheck --error-exitcode 3 \
    /tmp/gs/tensor_api --test-threads=1 lora_delta_matches 2>&1 | tee -a "$CHECKS" \
    | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|hazard|error" | head -20
fi
for s in ${BENCH:-0 1 auto}; do
  name=$([ "$s" = 0 ] && echo fused || { [ "$s" = 1 ] && echo split || echo chosen; })
  csv=$([ "$s" = auto ] && echo ours || echo "ours_$name")
  echo "== sgmv-bench, $name $(date -u +%T)" | tee -a "$OUT/bench.log"
  if [ "$s" = auto ]; then
    OPENLEDGER_SGMV_SPLIT=auto OPENLEDGER_SGMV_DEBUG=1 timeout $(left 150) /tmp/gs/sgmv-bench "$OUT/$csv.csv" >> "$OUT/bench.log" 2>&1
  else
    OPENLEDGER_SGMV_SPLIT=$s timeout $(left 150) /tmp/gs/sgmv-bench "$OUT/$csv.csv" >> "$OUT/bench.log" 2>&1
  fi
  echo "exit $?" | tee -a "$OUT/bench.log"
done
if [ -d gpu-bin/vllm_lora ] && [ -z "${SKIP_VLLM:-}" ]; then
  echo "== vLLM lora_shrink + lora_expand $(date -u +%T)" | tee -a "$OUT/bench.log"
  PYTHONUNBUFFERED=1 timeout $(left 200) python3 kernels/bench/vllm_lora_baseline.py "$OUT/ours_fused.csv" \
    "$OUT/vllm_table.md" gpu-bin/vllm_lora >> "$OUT/bench.log" 2>&1
  echo "exit $?" | tee -a "$OUT/bench.log"
fi
python3 kernels/bench/split_table.py "$OUT" | tee "$OUT/split_table.md" | tail -25
echo "== done $(date -u +%T), $(( $(date +%s) - T0 )) s"
