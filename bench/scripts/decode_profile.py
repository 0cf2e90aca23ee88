"""Where a decode step's device time goes, per kernel, from Nsight Compute's raw CSV.

Input: `ncu --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum
--csv --page raw` over `engine-gpu-bench --no-engine --batch B --adapters A --steps STEPS
--mark-runs`: the benchmark launches one `affine_f64` kernel before a decode
configuration's first timed step and one after its last, so the kernels between the first
two markers are STEPS steps of the first configuration. For each kernel name: launches a
step, mean time, mean DRAM bytes moved and the rate they moved at against COPY_GBPS (the
device-to-device copy rate the benchmark measured in the same call): how far each kernel
is from the memory floor, which bounds a decode step at small batch sizes.

Usage: python3 decode_profile.py NCU.csv LABEL COPY_GBPS STEPS
"""

import csv
import sys
from collections import defaultdict

TIME = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
BYTES = {"byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def column(header, units, name, table):
    """Index and unit factor of metric `name` (index None when ncu did not report it)."""
    if name not in header:
        return None, 1.0
    i = header.index(name)
    return i, table.get(units[i], 1.0)


def number(row, i, factor):
    if i is None:
        return 0.0
    try:
        return float(row[i].replace(",", "")) * factor
    except (ValueError, IndexError):
        return None


def main():
    path, label = sys.argv[1], sys.argv[2]
    copy_gbps, steps = float(sys.argv[3]), int(sys.argv[4])
    rows = [r for r in csv.reader(open(path)) if r]
    if len(rows) < 3:
        print(f"== {label}: no kernels in {path}")
        return
    header, units = rows[0], rows[1]
    name_col = header.index("Kernel Name")
    t_col, t_f = column(header, units, "gpu__time_duration.sum", TIME)
    r_col, r_f = column(header, units, "dram__bytes_read.sum", BYTES)
    w_col, w_f = column(header, units, "dram__bytes_write.sum", BYTES)
    kernels = []
    for r in rows[2:]:
        t, rd, wr = number(r, t_col, t_f), number(r, r_col, r_f), number(r, w_col, w_f)
        if None not in (t, rd, wr):
            kernels.append((r[name_col], t, rd + wr))
    marks = [i for i, (n, _, _) in enumerate(kernels) if "affine_f64" in n]
    if len(marks) < 2:
        print(f"== {label}: {len(marks)} markers in {len(kernels)} kernels: no timed steps")
        return
    timed = kernels[marks[0] + 1 : marks[1]]
    by_name = defaultdict(lambda: [0, 0.0, 0.0])
    for name, t, b in timed:
        k = by_name[name[:100]]
        k[0] += 1
        k[1] += t
        k[2] += b
    total = sum(t for _, t, _ in timed) / steps
    moved = sum(b for _, _, b in timed) / steps
    print(f"== {label}: {len(timed) / steps:.0f} kernels a step, {total / 1e3:.3f} ms of kernel "
          f"time a step (serialized: no launch gaps), {moved / 1e6:.0f} MB moved "
          f"({moved / total / 1e3:.0f} GB/s; copy rate {copy_gbps:.0f} GB/s)")
    print("| kernel | a step | mean us | mean MB | GB/s | of copy rate | us a step | share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (n, t, b) in sorted(by_name.items(), key=lambda kv: -kv[1][1]):
        mean_t, mean_b = t / n, b / n
        rate = mean_b / (mean_t * 1e3) if mean_t > 0 else 0.0
        print(f"| `{name}` | {n / steps:g} | {mean_t:.2f} | {mean_b / 1e6:.3f} | {rate:.0f} | "
              f"{100 * rate / copy_gbps:.0f}% | {t / steps:.1f} | {100 * t / steps / total:.1f}% |")


if __name__ == "__main__":
    main()
