#!/bin/bash
# Issue 21 item 5: adapter copies cut into runs of layers (`AdapterCacheConfig::copy_runs`),
# in one device call from the repository root with gpu-bin/layered-gpu.tar.xz carried
# (`kernels/bench/pack-gpu-bin.sh layered`; build: `cargo test -p openledger-engine --features
# cuda --test gpu_engine --no-run` and `cargo build -p openledger-bench --features cuda --bin
# density-bench`, both --release). In order, each cut short before END_S (default 560 s):
#   1. the CUDA engine tests (gpu_engine), the new copy-runs test among them;
#   2. density-bench's A/B in one process each: one copy per adapter (copy_runs 1, today's
#      default) then RUNS runs of layers (default 8), each DENSITY_S seconds (default 110),
#      ROUNDS rounds (default 2) of the loads warm32, uniform, zipf.
# Writes under $OUT: tests.log, runs1/ and runs$RUNS/ (gpu-run-density.sh's files).
set -o pipefail
END_S=${END_S:-560} LEFT_MARGIN=${LEFT_MARGIN:-10}
. kernels/bench/gpu-env.sh
mkdir -p /tmp/gl
tar -xJf gpu-bin/layered-gpu.tar.xz -C /tmp/gl || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/tests.log"
if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== gpu_engine $(date -u +%T)" | tee -a "$OUT/tests.log"
  timeout $(left 200) /tmp/gl/gpu_engine --test-threads=1 2>&1 | tee -a "$OUT/tests.log" \
    | grep -E "^test |test result|panicked"
fi
RUNS=${RUNS:-8}
for r in 1 "$RUNS"; do
  now=$(( $(date +%s) - T0 ))
  budget=$(( END_S - now - 5 ))
  [ "$budget" -gt "${DENSITY_S:-110}" ] && budget=${DENSITY_S:-110}
  [ "$budget" -lt 60 ] && { echo "no time left for copy_runs $r"; continue; }
  OUT="$OUT/runs$r" BIN=/tmp/gl END_S=$budget ROUNDS=${ROUNDS:-2} \
    EXTRA_ARGS="--copy-runs $r ${EXTRA_ARGS:-}" bash bench/gpu-run-density.sh
done
echo "== done $(date -u +%T), $(( $(date +%s) - T0 )) s"
