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
#   SKIP_PEFT=1      with TESTS=1: no transformers + PEFT check
#   SANITIZE=1       with TESTS=1: compute-sanitizer memcheck on SANITIZE_TESTS (default: the
#                    fused layer steps and the decode graphs) and the SGMV (into columns of a
#                    stacked output too), and racecheck on the fused layer steps
#   SANITIZE_RACE=0  no racecheck
#   AFTER_ARGS       extra engine-gpu-bench arguments for the new binary only (e.g. --graphs)
#   FULL_GRAPHS=1    with FULL=1: the whole benchmark again with OPENLEDGER_CUDA_GRAPHS=1 (the
#                    engine's decode steps replayed from CUDA graphs), tagged "full_graphs";
#                    "full" then runs with OPENLEDGER_CUDA_GRAPHS=0 (eager, whatever the default)
#   GRAPHS_TEST      with TESTS=1: OPENLEDGER_CUDA_GRAPHS for the second run of the engine tests
#                    (default 1; the first run takes the process default)
#   ENGINE_AB=N      the engine's decode alone (--engine-only), eager (OPENLEDGER_CUDA_GRAPHS=0)
#                    and graphed (=1) in turn, N rounds, then a pair without activation
#                    commitments (--no-commit): engine.jsonl, engine_table.md (with SKIP_BENCH=1:
#                    nothing else after)
#   ANCHOR_DEADLINE  seconds after the anchor's start past which it compiles no more sizes
#   END_S            seconds after the start by which every step has ended (default 570):
#                    each step's timeout is cut to what is left
set -o pipefail
OUT=${OUT:-/tmp/out}
T0=$(date +%s)
# left N: N, or the seconds left before END_S less 10 if fewer (at least 1).
left() { local l=$(( T0 + ${END_S:-570} - $(date +%s) - 10 )); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }
mkdir -p "$OUT" /tmp/gd/after /tmp/gd/before
# (gpu-run-graphs.sh unpacks its own binaries into /tmp/gd/after first.)
if [ -f gpu-bin/engine-gpu.tar.xz ]; then tar -xJf gpu-bin/engine-gpu.tar.xz -C /tmp/gd/after || exit 1; fi
[ -f gpu-bin/engine-before.tar.xz ] && { tar -xJf gpu-bin/engine-before.tar.xz -C /tmp/gd/before || exit 1; }
LIB=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
export LD_LIBRARY_PATH=$LIB:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee -a "$OUT/tests.log"
if [ -n "${TESTS:-}" ]; then
  echo "== tests" | tee -a "$OUT/tests.log"
  timeout $(left ${TEST_TIMEOUT:-200}) /tmp/gd/after/gpu_engine --test-threads=1 --nocapture 2>&1 | tee -a "$OUT/tests.log" \
    | grep -E "^test |test result|panicked|differ|rms|greedy|error" | head -60
  # The engine tests again with the engine's decode steps from CUDA graphs (the switch is
  # read once per process).
  echo "== engine tests, OPENLEDGER_CUDA_GRAPHS=${GRAPHS_TEST:-1}" | tee -a "$OUT/tests.log"
  OPENLEDGER_CUDA_GRAPHS=${GRAPHS_TEST:-1} timeout $(left 120) /tmp/gd/after/gpu_engine --test-threads=1 --nocapture cuda_engine 2>&1 \
    | tee -a "$OUT/tests.log" | grep -E "^test |test result|panicked|error" | head -20
  if [ -z "${SKIP_PEFT:-}" ]; then
    echo "== transformers + PEFT vs the engine's bf16 CUDA path" | tee -a "$OUT/tests.log"
    timeout $(left ${PEFT_TIMEOUT:-260}) python3 bench/scripts/hf_peft_check.py --engine /tmp/gd/after/engine-logits \
      --engine-device cuda --out /tmp/gd/peft > "$OUT/hf_peft_cuda.log" 2>&1
    echo "hf_peft_check exit $?" | tee -a "$OUT/tests.log"
    tail -22 "$OUT/hf_peft_cuda.log"
  fi
  if [ -f gpu-bin/sgmv-gpu.tar.xz ]; then  # the SGMV's own tests (y as columns of a wider output)
    mkdir -p /tmp/gd/sgmv && tar -xJf gpu-bin/sgmv-gpu.tar.xz -C /tmp/gd/sgmv
    echo "== SGMV tensor API tests" | tee -a "$OUT/tests.log"
    timeout 150 /tmp/gd/sgmv/tensor_api --test-threads=1 2>&1 | tee -a "$OUT/tests.log" \
      | grep -E "^test |test result|panicked|relative|Error"
  fi
  if [ -n "${SANITIZE:-}" ]; then
    echo "== compute-sanitizer $(date -u +%T)" | tee -a "$OUT/tests.log"
    for t in ${SANITIZE_TESTS:-cuda_fused_layer_steps cuda_decode_graphs}; do
      timeout $(left 120) compute-sanitizer --tool memcheck --error-exitcode 3 /tmp/gd/after/gpu_engine \
        --test-threads=1 $t 2>&1 | tee -a "$OUT/tests.log" | grep -E "ERROR SUMMARY|test result|Invalid|rror" | head -8
    done
    [ "${SANITIZE_RACE:-1}" = 1 ] && timeout $(left 120) compute-sanitizer --tool racecheck --error-exitcode 3 /tmp/gd/after/gpu_engine \
      --test-threads=1 cuda_fused_layer_steps 2>&1 | tee -a "$OUT/tests.log" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|hazard|rror" | head -8
    [ -x /tmp/gd/sgmv/tensor_api ] && SGMV_CASES=3 timeout $(left 150) compute-sanitizer --tool memcheck \
      --error-exitcode 3 /tmp/gd/sgmv/tensor_api --test-threads=1 2>&1 | tee -a "$OUT/tests.log" \
      | grep -E "ERROR SUMMARY|test result|Invalid|rror" | head -8
  fi
fi
bench() { # name output binary args...: the JSON lines tagged with the run's name
  local name=$1 out=$2 bin=$3; shift 3
  echo "== $name $(date -u +%T)" | tee -a "$OUT/bench.log"
  timeout $(left ${BENCH_TIMEOUT:-200}) "$bin" "$@" 2>> "$OUT/bench.log" | sed "s/^{/{\"run\":\"$name\",/" >> "$OUT/$out"
  echo "exit $?"
}
if [ -n "${ENGINE_AB:-}" ]; then
  # The engine's decode alone (engine-gpu-bench --engine-only), eager and with graphs in
  # turn, ENGINE_AB rounds, then one pair without activation commitments: engine.jsonl.
  for r in $(seq ${ENGINE_AB}); do
    OPENLEDGER_CUDA_GRAPHS=0 bench eager$r engine.jsonl /tmp/gd/after/engine-gpu-bench --engine-only
    OPENLEDGER_CUDA_GRAPHS=1 bench graphs$r engine.jsonl /tmp/gd/after/engine-gpu-bench --engine-only
  done
  OPENLEDGER_CUDA_GRAPHS=0 bench eager_nocommit engine.jsonl /tmp/gd/after/engine-gpu-bench --engine-only --no-commit
  OPENLEDGER_CUDA_GRAPHS=1 bench graphs_nocommit engine.jsonl /tmp/gd/after/engine-gpu-bench --engine-only --no-commit
  python3 - "$OUT/engine.jsonl" <<'PY' | tee "$OUT/engine_table.md"
import json, sys
rows, names = {}, []
for line in open(sys.argv[1]):
    try:
        d = json.loads(line)
    except ValueError:
        continue
    if d.get("measure") != "engine_decode":
        continue
    if d["run"] not in names:
        names.append(d["run"])
    rows.setdefault((d["batch"], d["adapters"]), {})[d["run"]] = d
print("engine decode tok/s, aggregate / full batch, per run:")
print("| batch | adapters | " + " | ".join(names) + " |")
for (b, a), r in sorted(rows.items()):
    cells = [f"{r[n]['tok_per_s']:.0f} / {r[n]['full_batch_tok_per_s']:.0f}" if n in r else "-" for n in names]
    print(f"| {b} | {a} | " + " | ".join(cells) + " |")
PY
fi
[ -n "${SKIP_BENCH:-}" ] && exit 0
DECODE="--no-engine --batch ${BATCHES:-1,8,32,64,128} --adapters 0,32"
for r in 1 2; do
  [ -x /tmp/gd/before/engine-gpu-bench ] && bench before$r decode.jsonl /tmp/gd/before/engine-gpu-bench $DECODE
  bench after$r decode.jsonl /tmp/gd/after/engine-gpu-bench $DECODE ${AFTER_ARGS:-}
done
if [ -f gpu-bin/hf_decode_anchor.py ]; then
  echo "== anchor $(date -u +%T)"
  # No new compile starts later than 90 s before the step's end (one takes up to ~60 s).
  a_left=$(left ${ANCHOR_TIMEOUT:-300}); a_dl=$(( a_left - 90 < ${ANCHOR_DEADLINE:-200} ? a_left - 90 : ${ANCHOR_DEADLINE:-200} ))
  PYTHONUNBUFFERED=1 timeout $a_left python3 gpu-bin/hf_decode_anchor.py "$OUT/anchor.jsonl" \
    --deadline $a_dl >> "$OUT/bench.log" 2>&1
  echo "anchor exit $?"
fi
[ -n "${FULL:-}" ] && OPENLEDGER_CUDA_GRAPHS=${FULL_GRAPHS:+0} bench full full.jsonl /tmp/gd/after/engine-gpu-bench ${AFTER_ARGS:-}
[ -n "${FULL:-}" ] && [ -n "${FULL_GRAPHS:-}" ] && OPENLEDGER_CUDA_GRAPHS=1 bench full_graphs full.jsonl /tmp/gd/after/engine-gpu-bench ${AFTER_ARGS:-}
# The bf16 matrix rate for the prefill's FLOP floor, measured here (torch, 8192^3, random).
python3 - <<'PY' >> "$OUT/anchor.jsonl" 2>> "$OUT/bench.log"
import json, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); s, e = torch.cuda.Event(True), torch.cuda.Event(True); ts = []
for _ in range(10):
    s.record(); a @ b; e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) / 1e3)
ts.sort(); print(json.dumps({"measure": "matmul", "tflop_per_s": round(2 * 8192**3 / ts[5] / 1e12, 1)}))
PY
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
            key = (d["batch"], d["adapters"], d["targets"] + (" graph" if d.get("graph") else ""))
            runs.setdefault(name, {})[key] = d
        if d.get("measure") in ("prefill", "engine_first_token", "engine_prefill", "engine_decode"):
            runs.setdefault(name, {}).setdefault("other", []).append(d)
anchor = {}
p = os.path.join(out, "anchor.jsonl")
if os.path.exists(p):
    for line in open(p):
        d = json.loads(line)
        if d.get("measure") == "hf_decode":
            anchor[(d["mode"], d["batch"])] = d["step_ms"]
        if d.get("measure") == "copy":
            anchor["copy"] = d["gb_per_s"]
        if d.get("measure") == "matmul":
            anchor["tflops"] = d["tflop_per_s"]
names = [n for n in ("before1", "before2", "after1", "after2") if n in runs]
print("copy GB/s: " + ", ".join(f"{n} {runs[n].get('copy')}" for n in names) + f", anchor {anchor.get('copy')}")
keys = sorted({k for n in names for k in runs[n] if k not in ("copy", "other")}, key=lambda k: (k[2], k[0], k[1]))
print("| batch | adapters | targets | " + " | ".join(f"{n} ms" for n in names)
      + " | after1 host enqueue ms | after x floor | floor ms | compile anchor ms | graph anchor ms |")
for k in keys:
    cells = [f"{runs[n][k]['step_ms']:.2f}" if k in runs[n] else "-" for n in names]
    a = runs.get("after1", {}).get(k)
    comp = anchor.get(("compile", k[0])) if k[1] == 0 else None
    graph = anchor.get(("graph", k[0])) if k[1] == 0 else None
    print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells)
          + f" | {a['enqueue_ms'] if a else '-'} | {a['x_floor'] if a else '-'} | {a['floor_ms'] if a else '-'}"
          + f" | {comp if comp else '-'} | {graph if graph else '-'} |")
# Decode without adapters, eager against graphed (the after runs), beside the anchor.
print()
print("| batch | eager ms | graph ms | floor ms | graph x floor | eager x floor | compile anchor ms | eager anchor ms |")
for b in sorted({k[0] for k in keys if k[1] == 0}):
    e = [runs[n][(b, 0, "qkvo")]["step_ms"] for n in names if (b, 0, "qkvo") in runs[n]]
    g = [runs[n][(b, 0, "qkvo graph")]["step_ms"] for n in names if (b, 0, "qkvo graph") in runs[n]]
    fl = next((runs[n][(b, 0, "qkvo")]["floor_ms"] for n in names if (b, 0, "qkvo") in runs[n]), None)
    f = lambda v: " / ".join(f"{x:.2f}" for x in v) or "-"
    print(f"| {b} | {f(e)} | {f(g)} | {fl} | {min(g) / fl:.2f} | {min(e) / fl:.2f} | {anchor.get(('compile', b), '-')} | {anchor.get(('eager', b), '-')} |"
          if g and e and fl else f"| {b} | {f(e)} | {f(g)} | {fl} | - | - | - | - |")
# The engine's decode (scheduler, sampling, streaming) eager (`full`) and with graphs
# (`full_graphs`) against the model step alone at the same batch (after1's eager and graphed
# steps): aggregate tok/s (the batch shrinking at the end) and over the full-batch steps.
eng = {}
for n in ("full", "full_graphs"):
    for d in runs.get(n, {}).get("other", []):
        if d["measure"] == "engine_decode":
            eng[(n, d["batch"], d["adapters"])] = d
if eng:
    print()
    print("| batch | adapters | engine eager tok/s (aggregate / full batch) | engine graphs tok/s | graphs / eager (full batch) | model step eager / graphed tok/s | engine / model step, eager / graphs (full batch) | graphs held |")
    for b, a in sorted({(k[1], k[2]) for k in eng}):
        e, g = eng.get(("full", b, a)), eng.get(("full_graphs", b, a))
        key = (b, a, "qkvo")
        me = runs.get("after1", {}).get(key, {}).get("tok_per_s")
        mg = runs.get("after1", {}).get((b, a, "qkvo graph"), {}).get("tok_per_s") or me
        cell = lambda d: f"{d['tok_per_s']:.0f} / {d.get('full_batch_tok_per_s', 0):.0f}" if d else "-"
        ratio = f"{g['full_batch_tok_per_s'] / e['full_batch_tok_per_s']:.3f}" if e and g and e.get("full_batch_tok_per_s") else "-"
        re = f"{e['full_batch_tok_per_s'] / me:.2f}" if e and me else "-"
        rg = f"{g['full_batch_tok_per_s'] / mg:.2f}" if g and mg else "-"
        print(f"| {b} | {a} | {cell(e)} | {cell(g)} | {ratio} | {me or '-'} / {mg or '-'} | {re} / {rg} | {g.get('graphs', '-') if g else '-'} |")
# Prefill of the 8B shape: 2 x (projection parameters) x tokens + causal attention, over the
# matrix rate measured above.
L, H, KV, F, T = 32, 4096, 1024, 14336, 512
proj = L * (H * (H + 2 * KV) + H * H + 3 * H * F)
flops = 2 * proj * T + L * 2 * 2 * (T * (T + 1) / 2) * H
for d in [d for n in ("after1", "after2", "full", "full_graphs") for d in runs.get(n, {}).get("other", [])]:
    if d["measure"] == "prefill" and anchor.get("tflops"):
        floor = flops / (anchor["tflops"] * 1e12) * 1e3
        print(f"{d['run']}: prefill {d['tokens']} tokens, adapter {d['adapter']}: {d['ms']} ms, FLOP floor {floor:.2f} ms "
              f"({flops / 1e12:.2f} TFLOP at {anchor['tflops']} TFLOP/s measured): {d['ms'] / floor:.2f}x")
    else:
        print(json.dumps(d))
PY
echo "== done $(date -u +%T)"
