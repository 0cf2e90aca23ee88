#!/usr/bin/env python3
"""The graphed decode step by attention partition size (bench/gpu-run-attn-partition.sh):
one row per batch size and adapter count, the median over rounds of each partition's step
time, its ratio to the floor, and the change against the first partition listed."""
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
        if m.get("measure") == "decode" and m.get("graph"):
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
