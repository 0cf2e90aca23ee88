#!/bin/bash
# Issue 21 item 5 on the GPU (docs/benchmarks.md, "Adapter density"): one device call, run
# from the repository root with gpu-bin/density-gpu.tar.xz and this script carried. Pack
# with `kernels/bench/pack-gpu-bin.sh density` (build command in docs/benchmarks.md).
# density-bench with 2,000 adapters over 128 slots, the loads warm32, uniform and zipf in
# turn for ROUNDS rounds (default 2): density.jsonl, density.log, table.md. If holding
# every adapter in page-locked host memory fails, it runs again with HOST_FALLBACK of them
# there (default 1000; the rest read from disk when needed). Knobs: ADAPTERS, SLOTS,
# RUNNING, REQUESTS, ROUNDS, EXTRA_ARGS; END_S (seconds after the start by which the run has
# ended, default 540); PACK (default gpu-bin/density-gpu.tar.xz; BIN: a folder already
# holding density-bench instead).
set -o pipefail
OUT=${OUT:-/tmp/out}
T0=$(date +%s)
left() { local l=$(( T0 + ${END_S:-540} - $(date +%s) - 10 )); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }
mkdir -p "$OUT" /tmp/gd
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee -a "$OUT/density.log"
free -g | tee -a "$OUT/density.log"
date -u | tee -a "$OUT/density.log"
if [ -n "${BIN:-}" ]; then cp "$BIN/density-bench" /tmp/gd/ || exit 1
else tar -xJf "${PACK:-gpu-bin/density-gpu.tar.xz}" -C /tmp/gd || exit 1; fi
ARGS="--adapters ${ADAPTERS:-2000} --slots ${SLOTS:-128} --running ${RUNNING:-64} --requests ${REQUESTS:-1000} --rounds ${ROUNDS:-2} ${EXTRA_ARGS:-}"
run() {
  echo "== density-bench $ARGS $* $(date -u +%T)" | tee -a "$OUT/density.log"
  timeout $(left 500) /tmp/gd/density-bench $ARGS "$@" > /tmp/gd/out.txt 2>> "$OUT/density.log"
  local rc=$?
  grep '^{' /tmp/gd/out.txt >> "$OUT/density.jsonl"
  grep -v '^{' /tmp/gd/out.txt | tee -a "$OUT/table.md"
  grep '^{' /tmp/gd/out.txt | grep -v '"load"'
  echo "exit $rc $(date -u +%T)" | tee -a "$OUT/density.log"
  return $rc
}
run || run --host-adapters ${HOST_FALLBACK:-1000}
tail -5 "$OUT/density.log"
