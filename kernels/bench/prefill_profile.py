"""Where a prefill's time goes, per kernel class, from Nsight Compute's raw CSV.

Input: `ncu --metrics gpu__time_duration.sum --csv --page raw` over
`engine-gpu-bench --prefill-only --mark-runs --prefill-runs 2`: before each prefill run the
benchmark launches one `affine_f64` kernel, and one after each configuration's last run
(nothing else there runs in f64), so the kernel list splits into the runs: warm-up and timed
without an adapter, then with one. The timed runs' kernels are summed by class and by name.

Usage: python3 prefill_profile.py NCU.csv LABEL [LAYERS_PROFILED LAYERS_MODEL]
(with the layer counts, per-layer classes are also scaled to the model's layers)
"""

import csv
import sys
from collections import defaultdict

# (class, substrings of the kernel name), first match wins.
CLASSES = [
    ("marker", ["affine_f64"]),
    ("prefill attention (fused)", ["prefill_attn"]),
    ("decode attention", ["paged_attn"]),
    ("sgmv (LoRA)", ["sgmv"]),
    ("softmax", ["softmax"]),
    ("fused layer ops (norm, silu, rope+kv)", ["rms_norm", "silu_mul", "rope_store"]),
    ("rmsnorm (candle)", ["rmsnorm"]),
    ("gemm", ["gemm", "nvjet", "xmma", "cutlass", "Kernel2", "splitK", "gemv"]),
    ("gather (index_select)", ["is_u32", "index_select", "gather"]),
    ("copy / cast (contiguous, to_dtype)", ["copy", "cast", "ucopy"]),
    ("element-wise (affine, broadcast add, mask)", ["affine", "badd", "bmul", "bsub", "bdiv", "add", "mul"]),
    ("argmax / top", ["argmax", "top", "row_top"]),
]


def classify(name):
    for cls, keys in CLASSES:
        if any(k in name for k in keys):
            return cls
    return "other"


def main():
    path, label = sys.argv[1], sys.argv[2]
    scale = 1.0
    if len(sys.argv) >= 5:
        scale = float(sys.argv[4]) / float(sys.argv[3])
    rows = [r for r in csv.reader(open(path)) if r]
    header = rows[0]
    name_col = header.index("Kernel Name")
    time_col = header.index("gpu__time_duration.sum")
    unit = rows[1][time_col] if len(rows) > 1 else "ns"
    factor = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0}.get(unit, 1e-6)
    kernels = []
    for r in rows[2:]:
        try:
            kernels.append((r[name_col], float(r[time_col].replace(",", "")) * factor))
        except (ValueError, IndexError):
            continue
    marks = [i for i, (n, _) in enumerate(kernels) if "affine_f64" in n]
    print(f"== {label}: {len(kernels)} kernels profiled, {len(marks)} run markers")
    # Markers: before each run and after each configuration's last, so with two runs per
    # configuration: [m0 warm-up m1 timed m2] [m3 warm-up m4 timed m5].
    if len(marks) < 6:
        print("fewer than 6 markers: the runs cannot be told apart")
        return
    runs = {
        "no adapter": kernels[marks[1] + 1 : marks[2]],
        "adapter": kernels[marks[4] + 1 : marks[5]],
    }
    for what, ks in runs.items():
        total = sum(t for _, t in ks)
        counts = defaultdict(int)
        for n, _ in ks:
            counts[n] += 1
        # Kernels launched once a run (the embedding's gather, the first norm, the LM head of
        # the last row) are not per layer: they are not scaled to the model's layers.
        def scaled(n, t):
            return t * scale if counts[n] > 1 else t

        by_class = defaultdict(lambda: [0.0, 0, 0.0])
        by_name = defaultdict(lambda: [0.0, 0])
        for n, t in ks:
            c = by_class[classify(n)]
            c[0] += t
            c[1] += 1
            c[2] += scaled(n, t)
            b = by_name[n[:90]]
            b[0] += t
            b[1] += 1
        total_scaled = sum(scaled(n, t) for n, t in ks)
        print(f"-- {label}, {what}: {len(ks)} kernels, {total:.3f} ms of kernel time"
              + (f" (per-layer kernels x{scale:g} to the model's layers: ~{total_scaled:.2f} ms)" if scale != 1 else ""))
        print("| class | ms | share | kernels |" + (" ms scaled |" if scale != 1 else ""))
        print("|---|---|---|---|" + ("---|" if scale != 1 else ""))
        for cls, (t, n, ts) in sorted(by_class.items(), key=lambda kv: -kv[1][0]):
            line = f"| {cls} | {t:.3f} | {100 * t / total:.1f}% | {n} |"
            if scale != 1:
                line += f" {ts:.2f} |"
            print(line)
        print("top kernels:")
        for n, (t, c) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:16]:
            print(f"  {t:8.3f} ms  {c:5d}x  [{classify(n)}] {n}")


if __name__ == "__main__":
    main()
