"""The split SGMV launch against the fused one and vLLM's kernels (kernels/bench/gpu-run-split.sh).

Usage: python3 split_table.py DIR
DIR holds sgmv-bench's ours_fused.csv and ours_split.csv (each launch forced), ours.csv (the
cost model's choice; optional) and vllm_table.md (vllm_lora_baseline.py's table; optional).
Prints a summary per way of launching (against vLLM where its table is there) and one row
per shape: fused, split, chosen and vLLM times.
"""
import csv
import math
import os
import sys


def read_csv(path):
    out = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        rows = [line for line in f if not line.startswith("#")]
    for r in csv.DictReader(rows):
        key = (int(r["d_in"]), int(r["d_out"]), r["rank"], int(r["tokens"]), int(r["adapters"]))
        out[key] = float(r["ours_us"])
    return out


def read_vllm(path):
    """Shape -> the faster of vLLM's best-grid and default times."""
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or "x" not in cells[0] or not cells[2].isdigit():
            continue
        d_in, d_out = (int(v) for v in cells[0].split("x"))
        try:
            best, default = float(cells[5]), float(cells[6])
        except ValueError:
            continue
        out[(d_in, d_out, cells[1], int(cells[2]), int(cells[3]))] = min(best, default)
    return out


def summary(name, times, vllm):
    keys = [k for k in times if k in vllm]
    if not keys:
        return f"| {name} | - | - | - | - |"
    ratios = [vllm[k] / times[k] for k in keys]
    faster = sum(r >= 1.0 for r in ratios)
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    worst = min(zip(ratios, keys))
    w = worst[1]
    return (f"| {name} | {faster} | {len(keys) - faster} | {geo:.2f}x | "
            f"{worst[0]:.2f}x ({w[0]}x{w[1]} r{w[2]} T{w[3]} n{w[4]}) |")


def main():
    d = sys.argv[1]
    fused = read_csv(os.path.join(d, "ours_fused.csv"))
    split = read_csv(os.path.join(d, "ours_split.csv"))
    chosen = read_csv(os.path.join(d, "ours.csv"))
    vllm = read_vllm(os.path.join(d, "vllm_table.md"))
    best = {k: min(fused[k], split[k]) for k in fused if k in split}
    print("| launch | faster than vLLM on | slower on | geometric mean, vLLM time / ours | worst |")
    print("|---|---:|---:|---:|---:|")
    for name, t in [("fused", fused), ("split", split), ("the better of the two per shape", best),
                    ("the cost model's choice", chosen)]:
        if t:
            print(summary(name, t, vllm))
    if chosen and best:
        lost = [chosen[k] / best[k] for k in chosen if k in best]
        print(f"\nthe choice against the better of the two: mean {sum(lost) / len(lost):.3f}x, "
              f"worst {max(lost):.2f}x over {len(lost)} shapes")
    print("\n| d_in x d_out | rank | T | n | fused (us) | split (us) | split / fused | chosen (us) | vLLM (us) |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for k in sorted(fused):
        s = split.get(k)
        c = chosen.get(k)
        v = vllm.get(k)
        f = lambda x: f"{x:.1f}" if x is not None else "-"
        ratio = f"{s / fused[k]:.2f}" if s else "-"
        print(f"| {k[0]}x{k[1]} | {k[2]} | {k[3]} | {k[4]} | {fused[k]:.1f} | {f(s)} | {ratio} | {f(c)} | {f(v)} |")


if __name__ == "__main__":
    main()
