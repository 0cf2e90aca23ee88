#!/bin/bash
# One device call for the engine's CUDA path: the GPU tests (bf16 CUDA vs f32 CPU logits,
# greedy tokens, the engine with GPU adapter eviction), then the benchmark on a
# Llama-3-8B-shaped random bf16 model. Run from the repository root with gpu-bin/ carried
# (`kernels/bench/pack-gpu-bin.sh engine` fills it). Writes under $OUT: tests.log,
# bench.jsonl / bench.log, benchevents.* (cudarc event tracking on), bench2.* (a repeat).
#   BENCH_ARGS   extra arguments for engine-gpu-bench (e.g. "--layers 16")
#   SKIP_BENCH=1 tests only
# Then, when the pack holds engine-logits, the transformers + PEFT check of the engine's bf16
# path (bench/scripts/hf_peft_check.py --engine-device cuda; results in hf_peft_cuda.*).
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/ge
tar -xJf gpu-bin/engine-gpu.tar.xz -C /tmp/ge || exit 1
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$OUT/tests.log"
echo "== tests" | tee -a "$OUT/tests.log"
timeout ${TEST_TIMEOUT:-150} /tmp/ge/gpu_engine --test-threads=1 --nocapture 2>&1 | tee -a "$OUT/tests.log" | grep -E "^test |test result|panicked|max \||greedy|error" | head -40
if [ -x /tmp/ge/engine-logits ]; then
  echo "== transformers + PEFT vs the engine's bf16 CUDA path" | tee -a "$OUT/tests.log"
  timeout ${PEFT_TIMEOUT:-240} python3 bench/scripts/hf_peft_check.py --engine /tmp/ge/engine-logits \
    --engine-device cuda --out "$OUT/peft" > "$OUT/hf_peft_cuda.log" 2>&1
  echo "hf_peft_check exit $?" | tee -a "$OUT/tests.log"
  tail -25 "$OUT/hf_peft_cuda.log"
fi
[ -n "${SKIP_BENCH:-}" ] && exit 0
# Runs: default, cudarc's event tracking left on (the comparison run), default again.
for r in 1 events 2; do
  sfx=$([ "$r" = 1 ] || echo "$r")
  echo "== bench run $r" | tee -a "$OUT/tests.log"
  ev=$([ "$r" = events ] && echo on || echo off)
  OPENLEDGER_CUDA_EVENTS=$ev timeout ${BENCH_TIMEOUT:-200} /tmp/ge/engine-gpu-bench $BENCH_ARGS > "$OUT/bench$sfx.jsonl" 2> "$OUT/bench$sfx.log"
  echo "bench exit $?"
  grep -E '"decode".*"batch":(1|64),"adapters":(0|32),|prefill|first_token|engine_decode|copy' "$OUT/bench$sfx.jsonl"
  tail -3 "$OUT/bench$sfx.log"
done
