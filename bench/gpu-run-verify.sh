#!/bin/bash
# Issue 23 on the GPU (docs/benchmarks.md, "Verifiable inference", GPU): two device calls on
# one warm machine, run from the repository root with gpu-bin/ carried. The model
# (SmolLM2-135M-Instruct Q4_1 GGUF, 94 MiB) is larger than one call may carry (64 MiB), so
# it travels in two parts (gpu-bin/model.part1, gpu-bin/model.part2; `split -b`), and the
# first call leaves the binaries and its part in /tmp/gv for the second. Pack with
# `kernels/bench/pack-gpu-bin.sh verify` (build commands in docs/benchmarks.md).
#   PART=1  the GPU tests (gpu_engine; memcheck of the commitment-entries test), then the
#           engine's decode with activation commitments on and off in turn in one process
#           (engine-gpu-bench --engine-only --commit-ab N; graphs on, AB_GRAPHS="1 0" adds an
#           eager process): tests.log, engine.jsonl, engine_table.md, bench.log
#   PART=2  joins the model, then verify-bench --device cuda, four processes at once: the
#           honest scenarios with CUDA graphs on (the default), the adapter cheats, the other
#           cheats, the honest ones with graphs off: verify.jsonl (one JSON object per
#           scenario), reports_graphs.jsonl, reports_cheats.jsonl, reports_cheats2.jsonl,
#           reports_eager.jsonl (every job's findings), verify.log
# Knobs: TESTS (gpu_engine's test filters; default all), SANITIZE_TESTS (memcheck's; default
# cuda_commitment_entries), SKIP_AB (PART=1: tests only), AB_ROUNDS (default 2), JOBS (default 1000; JOBS_EAGER, default 500, for the run
# with graphs off), END_S (seconds after the start by which
# every step has ended, default 570).
set -o pipefail
OUT=${OUT:-/tmp/out}
T0=$(date +%s)
left() { local l=$(( T0 + ${END_S:-570} - $(date +%s) - 10 )); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }
mkdir -p "$OUT" /tmp/gv
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee -a "$OUT/tests.log"
date -u | tee -a "$OUT/tests.log"
if [ "${PART:-1}" = 1 ]; then
  tar -xJf gpu-bin/verify-gpu.tar.xz -C /tmp/gv || exit 1
  cp gpu-bin/model.part1 /tmp/gv/ || exit 1
  echo "== tests" | tee -a "$OUT/tests.log"
  timeout $(left 150) /tmp/gv/gpu_engine --test-threads=1 --nocapture ${TESTS:-} 2>&1 | tee -a "$OUT/tests.log" \
    | grep -E "^test |test result|panicked|differ|bit for bit|rms|error" | head -60
  for t in ${SANITIZE_TESTS:-cuda_commitment_entries}; do
    echo "== memcheck $t" | tee -a "$OUT/tests.log"
    timeout $(left 60) compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/gv/gpu_engine \
      --test-threads=1 $t 2>&1 | tee -a "$OUT/tests.log" | grep -E "ERROR SUMMARY|test result|Invalid|rror" | head -8
  done
  [ -n "${SKIP_AB:-}" ] && exit 0
  for g in ${AB_GRAPHS:-1}; do
    echo "== engine decode, commitments on / off, OPENLEDGER_CUDA_GRAPHS=$g $(date -u +%T)" | tee -a "$OUT/bench.log"
    OPENLEDGER_CUDA_GRAPHS=$g timeout $(left 200) /tmp/gv/engine-gpu-bench --engine-only --commit-ab ${AB_ROUNDS:-2} \
      2>> "$OUT/bench.log" | sed "s/^{/{\"graphs_on\":$g,/" >> "$OUT/engine.jsonl"
    echo "exit $?"
  done
  python3 - "$OUT/engine.jsonl" <<'PY' | tee "$OUT/engine_table.md"
import json, statistics, sys
rows, copy = {}, {}
for line in open(sys.argv[1]):
    try:
        d = json.loads(line)
    except ValueError:
        continue
    if d.get("measure") == "copy":
        copy[d["graphs_on"]] = d["gb_per_s"]
    if d.get("measure") == "engine_decode":
        rows.setdefault((d["graphs_on"], d["batch"], d["adapters"]), {}).setdefault(d["commit"], []).append(d)
print("copy GB/s (each process): " + ", ".join(f"graphs {g}: {c}" for g, c in copy.items()))
print("| graphs | batch | adapters | full-batch step ms, commit on (rounds) | commit off (rounds) | median on / off | overhead | aggregate tok/s on / off (median) |")
print("|---|---|---|---|---|---|---|---|")
for (g, b, a), r in sorted(rows.items()):
    on = [x["full_batch_step_ms"] for x in r.get(True, [])]
    off = [x["full_batch_step_ms"] for x in r.get(False, [])]
    if not on or not off:
        continue
    mon, moff = statistics.median(on), statistics.median(off)
    agg = lambda k: statistics.median(x["tok_per_s"] for x in r[k])
    f = lambda v: " / ".join(f"{x:.3f}" for x in v)
    print(f"| {'on' if g else 'off'} | {b} | {a} | {f(on)} | {f(off)} | {mon:.3f} / {moff:.3f} | {(mon / moff - 1) * 100:+.2f}% | {agg(True):.0f} / {agg(False):.0f} |")
PY
  exit 0
fi
# PART=2 / cpu: the binaries and the first part are where call 1 left them.
[ -x /tmp/gv/verify-bench ] && [ -f /tmp/gv/model.part1 ] || { echo "call 1's files are gone (a fresh machine)"; exit 2; }
cat /tmp/gv/model.part1 gpu-bin/model.part2 > /tmp/gv/model.gguf || exit 1
sha256sum /tmp/gv/model.gguf | tee -a "$OUT/verify.log"
grep -q "$(cut -d' ' -f1 gpu-bin/model.sha256)" <(sha256sum /tmp/gv/model.gguf) || { echo "model checksum differs"; exit 1; }
if [ "$PART" = cpu ]; then
  # The CPU's verification cost on this host's processor (issue 23 item 4: verification
  # as a share of the single-stream generation it checks), generator and verifier on the
  # same number of threads, one configuration after the other (nothing else running).
  (lscpu; grep -m1 -o -w 'amx_int8\|avx512_vnni' /proc/cpuinfo | sort -u) 2>&1 | tee -a "$OUT/verify.log"
  for th in ${CPU_THREADS:-2 4 8}; do
    echo "== verify-bench --device cpu, $th threads each side $(date -u +%T)" | tee -a "$OUT/verify.log"
    timeout $(left 240) /tmp/gv/verify-bench --model /tmp/gv/model.gguf --device cpu --threads $th \
      --verifier-threads $th --jobs ${JOBS:-200} --batches ${BATCHES:-1} --only honest \
      --reports "$OUT/reports_cpu_$th.jsonl" 2>> "$OUT/verify.log" | tee /tmp/gv/cpu_$th.out | grep -v '^{'
    grep '^{' /tmp/gv/cpu_$th.out | sed "s/^{/{\"threads\":$th,/" >> "$OUT/verify.jsonl"
  done
  echo "== done $(date -u +%T)"
  exit 0
fi
JOBS=${JOBS:-1000}
# Four processes at once (the steps of a 135M model are bound by the host's launches, and
# the machine has 16 cores; the verify/generate costs they print are then not figures):
# the honest jobs with graphs on, the adapter cheats, the other cheats, and the honest jobs
# with graphs off. Honest
# jobs take batch sizes in turn from BATCHES (1 in 8 alone, the rest 8, 32 and 64).
BATCHES=${BATCHES:-1,8,32,64,64,32,8,64}
V="/tmp/gv/verify-bench --model /tmp/gv/model.gguf --device cuda --threads 4"
echo "== verify-bench x3 $(date -u +%T)" | tee -a "$OUT/verify.log"
timeout $(left 400) $V --jobs $JOBS --batches $BATCHES --only honest,honest-base \
  --reports "$OUT/reports_graphs.jsonl" > /tmp/gv/honest.out 2> /tmp/gv/honest.err &
timeout $(left 400) $V --jobs $JOBS --only adapter-skipped,other-adapter,adapter-at-delta-layer \
  --reports "$OUT/reports_cheats.jsonl" > /tmp/gv/cheats.out 2> /tmp/gv/cheats.err &
timeout $(left 400) $V --jobs $JOBS --only layers-skipped,other-model,lower-precision \
  --reports "$OUT/reports_cheats2.jsonl" > /tmp/gv/cheats2.out 2> /tmp/gv/cheats2.err &
OPENLEDGER_CUDA_GRAPHS=0 timeout $(left 400) $V --jobs ${JOBS_EAGER:-500} --batches $BATCHES --only honest,honest-base \
  --reports "$OUT/reports_eager.jsonl" > /tmp/gv/eager.out 2> /tmp/gv/eager.err &
wait
for r in honest cheats cheats2 eager; do
  echo "== $r" >> "$OUT/verify.log"; cat /tmp/gv/$r.err /tmp/gv/$r.out >> "$OUT/verify.log"
  grep -v '^{' /tmp/gv/$r.out; grep '^{' /tmp/gv/$r.out >> "$OUT/verify.jsonl"
done
echo "== done $(date -u +%T)"
