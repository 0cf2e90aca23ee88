"""Issue 21 item 6: each target against one device call's measurements.

Reads OUT/targets.jsonl (engine-gpu-bench lines tagged "run": step1/2, prefill1/2,
engine1/2) and OUT/anchor.jsonl (hf_decode_anchor.py) as bench/gpu-run-targets.sh writes
them; prints a markdown table, every figure from those files. Usage: targets_table.py OUT
"""
import json
import os
import sys


def lines(path):
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def main(out):
    rows = lines(os.path.join(out, "targets.jsonl"))
    anchor = lines(os.path.join(out, "anchor.jsonl"))
    copy = {r["run"]: r["gb_per_s"] for r in rows if r.get("measure") == "copy"}
    device = next((r["name"] for r in rows if r.get("measure") == "device"), "?")
    print(f"device: {device}; copy GB/s per process: "
          + ", ".join(f"{k} {v}" for k, v in copy.items()))
    # Model step: (batch, adapters, graph) -> [step ms per run], floor.
    step, floor = {}, {}
    for r in rows:
        if r.get("measure") == "decode" and r["targets"] == "qkvo":
            key = (r["batch"], r["adapters"], bool(r.get("graph")))
            step.setdefault(key, []).append(r["step_ms"])
            floor.setdefault(key, []).append(r["floor_ms"])
    comp = {r["batch"]: r["step_ms"] for r in anchor
            if r.get("measure") == "hf_decode" and r.get("mode") == "compile"}
    fmt = lambda v: " / ".join(f"{x:.2f}" for x in v)
    print()
    print("| target | measured (run 1 / run 2) | met |")
    print("|---|---|---|")

    def ratio_row(name, key, bound):
        if key not in step:
            print(f"| {name} | not measured | - |")
            return
        x = [s / f for s, f in zip(step[key], floor[key])]
        ok = all(v <= bound for v in x)
        print(f"| {name} | {fmt(step[key])} ms over a floor of {fmt(floor[key])} ms: "
              f"{fmt(x)}x | {'yes' if ok else 'no'} |")

    for b in (1, 8, 32, 64):
        ratio_row(f"decode step, batch {b}, no adapters, <= 1.25x floor (graphed)", (b, 0, True), 1.25)
    ratio_row("decode step, batch 64, 32 adapters, <= 1.4x floor (graphed)", (64, 32, True), 1.4)
    for b in (1, 8, 32, 64):
        ours = step.get((b, 0, True))
        if not ours or b not in comp:
            print(f"| faster than torch.compile at batch {b} | ours {fmt(ours or [])} ms, "
                  f"anchor {'not reached' if b not in comp else comp[b]} | - |")
            continue
        ok = max(ours) < comp[b]
        print(f"| faster than torch.compile at batch {b} | ours {fmt(ours)} ms, anchor "
              f"{comp[b]:.2f} ms ({max(ours) / comp[b]:.2f}x) | {'yes' if ok else 'no'} |")
    pre = [r for r in rows if r.get("measure") == "prefill" and r["run"].startswith("prefill")]
    fl = {r["run"]: r for r in rows if r.get("measure") == "prefill_floor"}
    for adapter in (False, True):
        p = [r for r in pre if r["adapter"] == adapter]
        x = [r["ms"] / fl[r["run"]]["floor_ms"] for r in p if r["run"] in fl]
        bound = 1.5
        label = "with a rank-16 q/k/v/o adapter (no target)" if adapter else "<= 1.5x FLOP floor"
        met = ("yes" if x and all(v <= bound for v in x) else "no") if not adapter else "-"
        print(f"| prefill 512 tokens {label} | {fmt([r['ms'] for r in p])} ms, floor "
              f"{fmt([fl[r['run']]['floor_ms'] for r in p if r['run'] in fl])} ms: {fmt(x)}x | {met} |")
    eng = [r for r in rows if r.get("measure") == "engine_decode"]
    for r in eng:
        key = (r["batch"], min(r["adapters"], r["batch"]), True)
        if key not in step:
            continue
        model_tok = [r["batch"] * 1e3 / s for s in step[key]]
        x = r["full_batch_tok_per_s"] / max(model_tok)
        print(f"| engine decode >= 0.95x model step, batch {r['batch']}, {r['adapters']} adapters "
              f"({r['run']}, commitments {'on' if r['commit'] else 'off'}"
              f"{', overlap off' if r.get('overlap') is False else ''}) | "
              f"{r['full_batch_tok_per_s']:.0f} tok/s full batch ({r['full_batch_step_ms']:.2f} ms) "
              f"against {max(model_tok):.0f} | {x:.2f}x {'yes' if x >= 0.95 else 'no'} |")


if __name__ == "__main__":
    main(sys.argv[1])
