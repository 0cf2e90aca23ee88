#!/bin/bash
# Issue 21 on the GPU: decode steps with adapters replayed from CUDA graphs, and the adapter
# file read in parallel chunks. Run from the repository root with gpu-bin/ carried
# (`kernels/bench/pack-gpu-bin.sh graphs` fills it: graphs-gpu.tar.xz, this script,
# gpu-run-decode.sh, gpu-run-cold.sh, hf_decode_anchor.py). Two calls, each within the
# device's 10 minutes:
#   PHASE=decode  the GPU tests (gpu_engine), compute-sanitizer memcheck on the new graph
#                 test (the fused SGMV's empty tiles in it), then gpu-run-decode.sh's model step (eager and graphed at batch
#                 1/8/32/64 with 0 and 32 adapters, two runs) and the torch.compile anchor
#   PHASE=table   PHASE=decode's model steps and anchor without the tests, the anchor given
#                 the time to compile every batch size
#   PHASE=cold    gpu-run-cold.sh's first-token runs, serial read (the committed reused
#                 buffer, OPENLEDGER_ADAPTER_READ_SERIAL=1) and parallel read in turn; the
#                 model step at batch 32 / 64 with 0 / 32 adapters beside the torch.compile
#                 anchor at 32 / 64; then the engine's decode at batch 64 with 32 adapters,
#                 eager and graphed, without activation commitments (adapter steps that
#                 compute deltas apart stay eager)
# Everything lands under $OUT (the scripts' own files; at most 8 come back).
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/gd/after /tmp/gc
tar -xJf gpu-bin/graphs-gpu.tar.xz -C /tmp/gd/after || exit 1
for b in gpu_engine engine-gpu-bench; do ln -sf /tmp/gd/after/$b /tmp/gc/$b; done
case ${PHASE:-decode} in
  decode)
    TESTS=1 SKIP_PEFT=1 SANITIZE=1 SANITIZE_TESTS=${SANITIZE_TESTS:-cuda_decode_graphs_with_adapters} SANITIZE_RACE=0 \
      BATCHES=${BATCHES:-1,8,32,64} AFTER_ARGS=--graphs ANCHOR_TIMEOUT=${ANCHOR_TIMEOUT:-190} \
      END_S=${END_S:-575} bash gpu-bin/gpu-run-decode.sh
    ;;
  table)
    BATCHES=${BATCHES:-1,8,32,64} AFTER_ARGS=--graphs ANCHOR_TIMEOUT=${ANCHOR_TIMEOUT:-320} \
      ANCHOR_DEADLINE=${ANCHOR_DEADLINE:-230} END_S=${END_S:-575} bash gpu-bin/gpu-run-decode.sh
    ;;
  cold)
    T0=$(date +%s)
    left() { local l=$(( T0 + ${END_S:-575} - $(date +%s) - 10 )); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }
    LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
    export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
    # This binary's GPU tests, and memcheck on the graph test with adapters.
    echo "== tests $(date -u +%T)" | tee -a "$OUT/graph-tests.log"
    timeout 120 /tmp/gd/after/gpu_engine --test-threads=1 --nocapture 2>&1 | tee -a "$OUT/graph-tests.log" \
      | grep -E "^test |test result|panicked|graphs|differ" | head -40
    timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/gd/after/gpu_engine --test-threads=1 \
      cuda_decode_graphs_with_adapters 2>&1 | tee -a "$OUT/graph-tests.log" | grep -E "ERROR SUMMARY|test result|Invalid"
    SKIP_TESTS=1 READ_AB=1 END_S=${COLD_END_S:-320} bash gpu-bin/gpu-run-cold.sh
    # The model step at batch 32 and 64 (this binary: graph segments per rank bound) beside
    # the torch.compile anchor at the same sizes (the decode call's anchor reached 1 and 8).
    echo "== decode $(date -u +%T)" | tee -a "$OUT/bench.log"
    OPENLEDGER_SGMV_DEBUG=1 timeout $(left 90) /tmp/gd/after/engine-gpu-bench --no-engine --batch 32,64 --adapters 0,32 --graphs \
      2>> "$OUT/bench.log" | sed 's/^{/{"run":"decode",/' | tee -a "$OUT/engine.jsonl" | grep -E '"copy"|"decode"'
    echo "== anchor $(date -u +%T)" | tee -a "$OUT/bench.log"
    PYTHONUNBUFFERED=1 timeout $(left 200) python3 gpu-bin/hf_decode_anchor.py "$OUT/anchor.jsonl" \
      --batches 32,64 --modes compile >> "$OUT/bench.log" 2>&1
    echo "anchor exit $?"; grep -E 'copy|hf_decode' "$OUT/anchor.jsonl"
    # The engine's decode at batch 64 with 32 adapters, eager then graphed, without
    # activation commitments (adapter steps that compute deltas apart stay eager).
    for g in 0 1; do
      echo "== engine decode, OPENLEDGER_CUDA_GRAPHS=$g, no commitments $(date -u +%T)" | tee -a "$OUT/bench.log"
      OPENLEDGER_CUDA_GRAPHS=$g timeout $(left 100) /tmp/gd/after/engine-gpu-bench --engine-only --no-commit \
        --engine-batch 64 2>> "$OUT/bench.log" | sed "s/^{/{\"run\":\"graphs$g\",/" | tee -a "$OUT/engine.jsonl" \
        | grep -E '"copy"|engine_decode'
    done
    ;;
esac
echo "== done $(date -u +%T)"
