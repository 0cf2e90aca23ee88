#!/bin/bash
# Issue 21 item 4 (cold adapters) on the GPU, one device call, run from the repository root
# with gpu-bin/ carried (`kernels/bench/pack-gpu-bin.sh cold` fills it; build commands in
# docs/benchmarks.md, "Cold adapters"). Writes under $OUT: tests.log, memcheck.log,
# after1.jsonl / after2.jsonl (this branch's engine-gpu-bench), before.jsonl (the base
# commit's, when packed), bench.log, table.md.
#   TESTS        gpu_engine's test filters (default: all)
#   SKIP_TESTS=1 benchmarks only
#   END_S        seconds after the start by which every step has ended (default 540)
#   READ_AB=1    the adapter file read serially (OPENLEDGER_ADAPTER_READ_SERIAL=1: serial1,
#                serial2) and in parallel (after1, after2) in turn, instead of after1,
#                before, after2
set -o pipefail
OUT=${OUT:-/tmp/out}
T0=$(date +%s)
left() { local l=$(( T0 + ${END_S:-540} - $(date +%s) - 10 )); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }
mkdir -p "$OUT" /tmp/gc
# (gpu-run-graphs.sh unpacks its own binaries into /tmp/gc first.)
if [ -f gpu-bin/cold-gpu.tar.xz ]; then tar -xJf gpu-bin/cold-gpu.tar.xz -C /tmp/gc || exit 1; fi
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$OUT/tests.log"
date -u | tee -a "$OUT/tests.log"
if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== tests" | tee -a "$OUT/tests.log"
  timeout $(left 200) /tmp/gc/gpu_engine --test-threads=1 --nocapture ${TESTS:-} 2>&1 | tee -a "$OUT/tests.log" \
    | grep -E "^test |test result|panicked|differ|rms|error" | head -40
  echo "== memcheck (packed upload test, engine with prefetch from disk)" | tee -a "$OUT/tests.log"
  timeout $(left 120) compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/gc/gpu_engine --test-threads=1 \
    cuda_packed_page_locked cuda_engine_with_adapters_prefetched 2>&1 | tee "$OUT/memcheck.log" \
    | grep -E "ERROR SUMMARY|test result|Invalid|rror" | head -8
fi
# The engine runs only (first token by adapter tier, alone and beside a decoding batch, the
# parts of a cold adapter's cost), the engine decode reduced to batch 1 and 64 x 32 adapters.
ARGS="--engine-only --engine-batch 1"
run() {
  echo "== $1 $(date -u +%T)" | tee -a "$OUT/bench.log"
  timeout $(left 150) "$2" $ARGS > "$OUT/$1.jsonl" 2>> "$OUT/bench.log"
  echo "$1 exit $?" | tee -a "$OUT/bench.log"
  grep -E 'copy|first_token|adapter_load_parts|device' "$OUT/$1.jsonl"
}
if [ -n "${READ_AB:-}" ]; then
  for r in 1 2; do
    OPENLEDGER_ADAPTER_READ_SERIAL=1 run serial$r /tmp/gc/engine-gpu-bench
    run after$r /tmp/gc/engine-gpu-bench
  done
else
  run after1 /tmp/gc/engine-gpu-bench
  [ -x /tmp/gc/engine-gpu-bench-before ] && run before /tmp/gc/engine-gpu-bench-before
  run after2 /tmp/gc/engine-gpu-bench
fi
python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, name + ".jsonl")
    if not os.path.exists(p):
        return []
    res = []
    for line in open(p):
        try:
            res.append(json.loads(line))
        except ValueError:
            pass
    return res
runs = [r for r in ["before", "serial1", "after1", "serial2", "after2"] if rows(r)]
print("| run | copy GB/s | first token ms: none / gpu (warm) / host / disk | host - warm | disk - warm |")
print("|---|---|---|---|---|")
for r in runs:
    d = rows(r)
    copy = next((x["gb_per_s"] for x in d if x.get("measure") == "copy"), 0)
    ft = {x["adapter_tier"]: x for x in d if x.get("measure") == "engine_first_token"}
    if not ft:
        continue
    g = lambda t: ft[t]["ms"] if t in ft else float("nan")
    print(f"| {r} | {copy} | {g('none'):.2f} / {g('gpu'):.2f} / {g('host'):.2f} / {g('disk'):.2f} | {g('host') - g('gpu'):+.2f} | {g('disk') - g('gpu'):+.2f} |")
print()
print("| run | tier | runs ms (median) | beside 8 decoding: ttft ms, steps waited, step ms before / while waiting / admitted |")
print("|---|---|---|---|")
for r in runs:
    d = rows(r)
    for x in d:
        if x.get("measure") == "engine_first_token":
            print(f"| {r} | {x['adapter_tier']} | {x['runs_ms']} ({x['ms']}) | |")
    for x in d:
        if x.get("measure") == "engine_first_token_beside_decode":
            print(f"| {r} | {x['adapter_tier']} beside decode | | {x['ms']}, {x['steps_while_waiting']}, {x['decode_step_ms_before']} / {x['step_ms_while_waiting']} / {x['admitted_step_ms']} |")
for r in runs:
    for x in rows(r):
        if x.get("measure") == "adapter_load_parts":
            print(r, json.dumps(x))
PY
