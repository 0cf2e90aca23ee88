#!/usr/bin/env python3
"""The graphed decode step by attention partition size (bench/gpu-run-attn-partition.sh):
one row per batch size and adapter count (q/k/v/o adapters), the median over rounds of each
partition's step time, its ratio to the floor, and the change against the first partition
listed. Last line: "best partition: P", the one whose worst step against issue 21's bounds
(1.25x the floor without adapters, 1.4x at batch 64 with 32) is lowest."""
import json
import statistics
import sys
from collections import defaultdict

steps = defaultdict(list)  # (batch, adapters, part) -> [step_ms]
floors = {}
copies = defaultdict(list)
parts = []
with open(sys.argv[1]) as f:
    for line in f:
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue
        if m.get("part") not in parts:
            parts.append(m["part"])
        if m.get("measure") == "copy":
            copies[m["part"]].append(m["gb_per_s"])
        if m.get("measure") == "decode" and m.get("graph") and m.get("targets") == "qkvo":
            key = (m["batch"], m["adapters"])
            steps[key + (m["part"],)].append(m["step_ms"])
            floors[key] = m["floor_ms"]
print("copy GB/s by partition: " + ", ".join(
    f"{p}: {statistics.median(copies[p]):.0f}" for p in parts if copies[p]))
print()
print("| batch | adapters | floor ms | " + " | ".join(f"part {p}: ms (x floor)" for p in parts) + " |")
print("|---:|---:|---:|" + "---:|" * len(parts))
for key in sorted(floors):
    cells = []
    base = None
    for p in parts:
        times = steps.get(key + (p,))
        if not times:
            cells.append("-")
            continue
        t = statistics.median(times)
        base = base or t
        change = "" if t == base else f", {100 * (t / base - 1):+.1f}%"
        cells.append(f"{t:.3f} ({t / floors[key]:.2f}x{change})")
    print(f"| {key[0]} | {key[1]} | {floors[key]:.3f} | " + " | ".join(cells) + " |")


def bound(key):
    return 1.4 if key[1] > 1 else 1.25


worst = {}
for p in parts:
    ratios = [statistics.median(steps[key + (p,)]) / floors[key] / bound(key)
              for key in floors if key + (p,) in steps and (key[1] == 0 or key == (64, 32))]
    if ratios:
        worst[p] = max(ratios)
print()
print("worst step against its bound: " + ", ".join(f"part {p}: {w:.3f}" for p, w in worst.items()))
if worst:
    print(f"best partition: {min(worst, key=worst.get)}")
