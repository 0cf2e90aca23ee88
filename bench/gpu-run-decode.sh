#!/bin/bash
# One device call for the GPU decode step (issue 21): the model step of engine-gpu-bench,
# before and after a change, alternating (before, after, before, after), the copy bandwidth
# measured in each run, then the torch.compile decode anchor (transformers, static cache,
# CUDA graphs) on the same GPU, then (FULL=1) the whole benchmark of the new binary
# (prefill, first token, engine decode). Run from the repository root with gpu-bin/ carried
# (`BEFORE_BENCH=<engine-gpu-bench built at the base commit> kernels/bench/pack-gpu-bin.sh
# engine` fills it: engine-gpu.tar.xz, engine-before.tar.xz, hf_decode_anchor.py).
# Writes under $OUT (at most 8 files come back): tests.log, hf_peft_cuda.log, decode.jsonl
# (every decode run's lines, tagged "run": before1 | after1 | before2 | after2), bench.log
# (the runs' stderr and the anchor's output), anchor.jsonl, full.jsonl, table.md.
# Two calls fit the device's 10 minutes: `TESTS=1 SKIP_BENCH=1`, then `FULL=1`.
#   BATCHES          decode batch sizes (default 1,8,32,64,128), adapters 0 and 32
#   SKIP_BENCH=1     tests only
#   TESTS=1          first the GPU tests and the transformers + PEFT check (gpu-run-engine.sh's),
#                    and the SGMV tensor API tests when gpu-bin/sgmv-gpu.tar.xz is there
#   ANCHOR_DEADLINE  seconds after the anchor's start past which it compiles no more sizes
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/gd/after /tmp/gd/before
tar -xJf gpu-bin/engine-gpu.tar.xz -C /tmp/gd/after || exit 1
[ -f gpu-bin/engine-before.tar.xz ] && { tar -xJf gpu-bin/engine-before.tar.xz -C /tmp/gd/before || exit 1; }
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee -a "$OUT/tests.log"
if [ -n "${TESTS:-}" ]; then
  echo "== tests" | tee -a "$OUT/tests.log"
  timeout ${TEST_TIMEOUT:-200} /tmp/gd/after/gpu_engine --test-threads=1 --nocapture 2>&1 | tee -a "$OUT/tests.log" \
    | grep -E "^test |test result|panicked|differ|rms|greedy|error" | head -60
  echo "== transformers + PEFT vs the engine's bf16 CUDA path" | tee -a "$OUT/tests.log"
  timeout ${PEFT_TIMEOUT:-260} python3 bench/scripts/hf_peft_check.py --engine /tmp/gd/after/engine-logits \
    --engine-device cuda --out /tmp/gd/peft > "$OUT/hf_peft_cuda.log" 2>&1
  echo "hf_peft_check exit $?" | tee -a "$OUT/tests.log"
  tail -22 "$OUT/hf_peft_cuda.log"
  if [ -f gpu-bin/sgmv-gpu.tar.xz ]; then  # the SGMV's own tests (y as columns of a wider output)
    mkdir -p /tmp/gd/sgmv && tar -xJf gpu-bin/sgmv-gpu.tar.xz -C /tmp/gd/sgmv
    echo "== SGMV tensor API tests" | tee -a "$OUT/tests.log"
    timeout 150 /tmp/gd/sgmv/tensor_api --test-threads=1 2>&1 | tee -a "$OUT/tests.log" \
      | grep -E "^test |test result|panicked|relative|Error"
  fi
fi
[ -n "${SKIP_BENCH:-}" ] && exit 0
DECODE="--no-engine --batch ${BATCHES:-1,8,32,64,128} --adapters 0,32"
bench() { # name output binary args...: the JSON lines tagged with the run's name
  local name=$1 out=$2 bin=$3; shift 3
  echo "== $name $(date -u +%T)" | tee -a "$OUT/bench.log"
  timeout ${BENCH_TIMEOUT:-200} "$bin" "$@" 2>> "$OUT/bench.log" | sed "s/^{/{\"run\":\"$name\",/" >> "$OUT/$out"
  echo "exit $?"
}
for r in 1 2; do
  [ -x /tmp/gd/before/engine-gpu-bench ] && bench before$r decode.jsonl /tmp/gd/before/engine-gpu-bench $DECODE
  bench after$r decode.jsonl /tmp/gd/after/engine-gpu-bench $DECODE
done
if [ -f gpu-bin/hf_decode_anchor.py ]; then
  echo "== anchor $(date -u +%T)"
  PYTHONUNBUFFERED=1 timeout ${ANCHOR_TIMEOUT:-300} python3 gpu-bin/hf_decode_anchor.py "$OUT/anchor.jsonl" \
    --deadline ${ANCHOR_DEADLINE:-200} >> "$OUT/bench.log" 2>&1
  echo "anchor exit $?"
fi
[ -n "${FULL:-}" ] && bench full full.jsonl /tmp/gd/after/engine-gpu-bench
# The table: step ms per run, x floor of the first after-run, copy bandwidth of each run.
python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, os, sys
out = sys.argv[1]
runs = {}
for f in ("decode.jsonl", "full.jsonl"):
    p = os.path.join(out, f)
    if not os.path.exists(p):
        continue
    for line in open(p):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        name = d.get("run")
        if d.get("measure") == "copy":
            runs.setdefault(name, {})["copy"] = d["gb_per_s"]
        if d.get("measure") == "decode":
            runs.setdefault(name, {})[(d["batch"], d["adapters"], d["targets"])] = d
anchor = {}
p = os.path.join(out, "anchor.jsonl")
if os.path.exists(p):
    for line in open(p):
        d = json.loads(line)
        if d.get("measure") == "hf_decode":
            anchor[(d["mode"], d["batch"])] = d["step_ms"]
        if d.get("measure") == "copy":
            anchor["copy"] = d["gb_per_s"]
names = [n for n in ("before1", "before2", "after1", "after2") if n in runs]
print("copy GB/s: " + ", ".join(f"{n} {runs[n].get('copy')}" for n in names) + f", anchor {anchor.get('copy')}")
keys = sorted({k for n in names for k in runs[n] if k != "copy"}, key=lambda k: (k[2], k[0], k[1]))
print("| batch | adapters | targets | " + " | ".join(f"{n} ms" for n in names) + " | after x floor | floor ms | compile anchor ms |")
for k in keys:
    cells = [f"{runs[n][k]['step_ms']:.2f}" if k in runs[n] else "-" for n in names]
    a = runs.get("after1", {}).get(k)
    comp = anchor.get(("compile", k[0])) if k[1] == 0 else None
    print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells)
          + f" | {a['x_floor'] if a else '-'} | {a['floor_ms'] if a else '-'} | {comp if comp else '-'} |")
PY
echo "== done $(date -u +%T)"
