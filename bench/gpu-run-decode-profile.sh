#!/bin/bash
# Issue 21: where the decode step's time goes, kernel by kernel (docs/benchmarks.md, "Decode
# step, kernel by kernel"). Run from the repository root with gpu-bin/targets-gpu.tar.xz
# carried (`kernels/bench/pack-gpu-bin.sh targets`). For each batch size of BATCHES (default
# 1 64), an 8-layer model of the 8B shape's layers: Nsight Compute's time and DRAM bytes of
# every kernel of STEPS (default 3) timed eager decode steps (the kernels a graph replays),
# between engine-gpu-bench's markers; bench/scripts/decode_profile.py turns each into a
# table against the copy rate measured in the same process. Then the same steps timed
# without the profiler, eager and graphed. Writes under $OUT: profile.md, profile.log.
set -o pipefail
DEFAULT_END_S=200
. kernels/bench/gpu-env.sh
mkdir -p /tmp/gt
[ -x /tmp/gt/engine-gpu-bench ] || tar -xJf gpu-bin/targets-gpu.tar.xz -C /tmp/gt || exit 1
STEPS=${STEPS:-3}
for b in ${BATCHES:-1 64}; do
  echo "== batch $b $(date -u +%T)" | tee -a "$OUT/profile.log"
  ARGS="--no-engine --layers 8 --batch $b --adapters ${ADAPTERS:-0} --all7-adapters 0 --steps $STEPS --prefill-runs 2 --mark-runs"
  timeout $(left 120) ncu --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    --csv --page raw --clock-control none --cache-control none --launch-count ${LAUNCHES:-1500} \
    /tmp/gt/engine-gpu-bench $ARGS > /tmp/gt/ncu-$b.out 2>> "$OUT/profile.log"
  echo "ncu exit $?" | tee -a "$OUT/profile.log"
  grep '^"' /tmp/gt/ncu-$b.out > /tmp/gt/ncu-$b.csv
  copy=$(grep -o '"measure":"copy"[^}]*' /tmp/gt/ncu-$b.out | grep -o '"gb_per_s":[0-9.]*' | cut -d: -f2)
  python3 bench/scripts/decode_profile.py /tmp/gt/ncu-$b.csv "batch $b, 8 layers" "${copy:-0}" $STEPS \
    | tee -a "$OUT/profile.md"
  timeout $(left 60) /tmp/gt/engine-gpu-bench --no-engine --layers 8 --batch $b --adapters ${ADAPTERS:-0} \
    --all7-adapters 0 --graphs --prefill-runs 2 2>> "$OUT/profile.log" | grep -E '"decode"|"copy"' \
    | tee -a "$OUT/profile.md"
done
echo "== done $(date -u +%T), $(( $(date +%s) - T0 )) s"
