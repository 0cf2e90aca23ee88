#!/bin/bash
# Issue 21 item 6: the decode step against the attention's partition size, in one device
# call from the repository root with gpu-bin/targets-gpu.tar.xz carried
# (`kernels/bench/pack-gpu-bin.sh targets`). For each PARTS (default "512 256 128 64"),
# engine-gpu-bench's model step (decode at batch 1/8/32/64 with 0 and 32 adapters, eager and
# graphed, and the copy bandwidth of the same process) with OPENLEDGER_ATTN_PARTITION set,
# ROUNDS times (default 2) in turn; then bench/scripts/partition_table.py. With PROFILE=1,
# afterwards gpu-run-decode-profile.sh (Nsight Compute, kernel by kernel) at the default
# partition. Writes under $OUT: partition.jsonl (tagged "part", "round"), partition.log,
# partition.md (and profile.md, profile.log).
set -o pipefail
DEFAULT_END_S=${DEFAULT_END_S:-300}
. kernels/bench/gpu-env.sh
mkdir -p /tmp/gt
[ -x /tmp/gt/engine-gpu-bench ] || tar -xJf gpu-bin/targets-gpu.tar.xz -C /tmp/gt || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/partition.log"
for r in $(seq 1 "${ROUNDS:-2}"); do
  for part in ${PARTS:-512 256 128 64}; do
    echo "== partition $part round $r $(date -u +%T)" | tee -a "$OUT/partition.log"
    OPENLEDGER_ATTN_PARTITION=$part timeout $(left 60) /tmp/gt/engine-gpu-bench --no-engine \
      --batch ${BATCHES:-1,8,32,64} --adapters 0,32 --graphs 2>> "$OUT/partition.log" \
      | sed "s/^{/{\"part\":$part,\"round\":$r,/" >> "$OUT/partition.jsonl"
    echo "exit $?" | tee -a "$OUT/partition.log"
  done
done
python3 bench/scripts/partition_table.py "$OUT/partition.jsonl" | tee "$OUT/partition.md"
if [ -n "${PROFILE:-}" ]; then
  END_S=$(( ${END_S:-$DEFAULT_END_S} - ($(date +%s) - T0) )) bash bench/gpu-run-decode-profile.sh
fi
echo "== done $(date -u +%T), $(( $(date +%s) - T0 )) s"
