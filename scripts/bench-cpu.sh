#!/usr/bin/env bash
# CPU serving benchmark (issue 11): our engine and llama.cpp (node-llama-cpp's prebuilt CPU
# binaries, pinned in bench/llamacpp) on the embedded SmolLM2-135M-Instruct Q4_1, one after
# the other on this machine, then a table of both and the targets.
# Usage: scripts/bench-cpu.sh [--repeat N] [--quick]   (--quick: 1 run, 32 generated tokens)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh

repeat=3
generate=128
while [ $# -gt 0 ]; do
    case "$1" in
        --repeat) repeat="$2"; shift 2 ;;
        --quick) repeat=1; generate=32; shift ;;
        *) echo "bench-cpu: unknown option $1" >&2; exit 2 ;;
    esac
done

if [ ! -d bench/llamacpp/node_modules/node-llama-cpp ] ||
    [ bench/llamacpp/package-lock.json -nt bench/llamacpp/node_modules/.package-lock.json ]; then
    # `npm install` (it follows the lockfile): npm 11's `npm ci` refuses this lockfile for the
    # optional per-platform packages of other systems that it does not list.
    (cd bench/llamacpp && npm install --no-audit --no-fund --ignore-scripts >/dev/null) ||
        { echo "bench-cpu: npm install in bench/llamacpp failed" >&2; exit 1; }
fi
cargo build --release --locked --workspace --bin engine-bench >/dev/null

out=$(mktemp)
trap 'rm -f "$out"' EXIT
common=(--prompt 512 --generate "$generate" --batch-prompt 64 --batch 8,32 --repeat "$repeat")
echo "bench-cpu: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), repeat $repeat" >&2
echo "bench-cpu: ours (2 threads)" >&2
"$CARGO_TARGET_DIR/release/engine-bench" --model "$OPENLEDGER_MODEL" --threads 2 "${common[@]}" 2>/dev/null >>"$out"
# Long contexts, where attention over the cache dominates: 32 sequences of 512-token prompts.
long=(--batch-prompt 512 --batch 32 --generate "$generate" --repeat "$repeat")
echo "bench-cpu: ours (2 threads), 512-token contexts" >&2
"$CARGO_TARGET_DIR/release/engine-bench" --model "$OPENLEDGER_MODEL" --threads 2 "${long[@]}" \
    --only aggregate,adapters 2>/dev/null | grep '"measure"' >>"$out"
for t in 1 2; do
    echo "bench-cpu: llama.cpp ($t thread(s))" >&2
    (cd bench/llamacpp && node bench.mjs --model "$OPENLEDGER_MODEL" --threads "$t" \
        --prompt 512 --generate "$generate" --batch-prompt 64 --batch 8,32 --repeat "$repeat") >>"$out"
    (cd bench/llamacpp && node bench.mjs --model "$OPENLEDGER_MODEL" --threads "$t" \
        "${long[@]}" --only aggregate) | grep '"measure"' >>"$out"
done
# BENCH_CPU_RAW=FILE keeps every measurement's JSON line.
if [ -n "${BENCH_CPU_RAW:-}" ]; then cp "$out" "$BENCH_CPU_RAW"; fi
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def pick(engine, measure, seqs, adapters=False, prompt=None):
    c = [r for r in rows if r.get("engine") == engine and r.get("measure") == measure
         and r.get("sequences") == seqs and r.get("adapters") == adapters
         and (measure != "aggregate" or r.get("prompt") == (prompt or 64))]
    return max(c, key=lambda r: r["tok_per_s"]) if c else None
rss = {r["engine"] + str(r.get("threads")): r["peak_rss_mib"] for r in rows if "peak_rss_mib" in r}
print(f"{'measure':34} {'ours tok/s':>11} {'llama.cpp tok/s':>16} {'ratio':>6}  target")
ok = True
for label, m, n in [("prefill, 512-token prompt", "prefill", 1), ("decode, 1 sequence", "decode", 1),
                    ("aggregate decode, 8 sequences", "aggregate", 8), ("aggregate decode, 32 sequences", "aggregate", 32)]:
    a, b = pick("openledger", m, n), pick("llama.cpp", m, n)
    if not a or not b:
        continue
    ratio = a["tok_per_s"] / b["tok_per_s"]
    ok &= ratio >= 1.0
    print(f"{label:34} {a['tok_per_s']:11.1f} {b['tok_per_s']:12.1f} ({b['threads']}t) {ratio:6.2f}  >= 1.00 {'met' if ratio >= 1 else 'NOT met'}")
for n in (8, 32):
    a, base = pick("openledger", "aggregate", n, True), pick("openledger", "aggregate", n)
    if a and base:
        ratio = a["tok_per_s"] / base["tok_per_s"]
        label = f"{'with ' + str(n) + ' distinct rank-16 adapters':34} {a['tok_per_s']:11.1f} {'(ours w/o)':>16} {ratio:6.2f}"
        if n == 32:
            # The issue's adapter target is stated for 32 distinct adapters; 8 is measured.
            ok &= ratio >= 0.8
            print(f"{label}  >= 0.80 {'met' if ratio >= 0.8 else 'NOT met'}")
        else:
            print(f"{label}  (measured, no target)")
# Attention over long contexts (issue 18): 32 sequences with 32 distinct adapters against
# llama.cpp's best with none.
a, b = pick("openledger", "aggregate", 32, True, 512), pick("llama.cpp", "aggregate", 32, False, 512)
base = pick("openledger", "aggregate", 32, False, 512)
if a and b:
    ratio = a["tok_per_s"] / b["tok_per_s"]
    ok &= ratio >= 2.0
    if base:
        print(f"{'32 seqs, 512-token ctx, no adapters':34} {base['tok_per_s']:11.1f} {b['tok_per_s']:12.1f} ({b['threads']}t) {base['tok_per_s'] / b['tok_per_s']:6.2f}  (measured)")
    print(f"{'32 seqs, 512-token ctx, 32 adapters':34} {a['tok_per_s']:11.1f} {b['tok_per_s']:12.1f} ({b['threads']}t) {ratio:6.2f}  >= 2.00 {'met' if ratio >= 2 else 'NOT met'}")
print("peak RSS MiB: " + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(rss.items())))
print("targets: " + ("all met" if ok else "NOT all met"))
PY
