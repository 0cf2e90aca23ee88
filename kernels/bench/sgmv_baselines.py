"""PyTorch baselines for the SGMV benchmark, on the configurations and data of sgmv-bench.

Reads the CSV that `sgmv-bench` wrote (one row per configuration, with our time), rebuilds
the same inputs with the same closed-form generator, times two baselines the same way
(CUDA graph replay, a 256 MiB read before each repetition to flush L2, events, median after
warm-up, x/y rotated over 2 sets), and prints the joined markdown table.

  loop: for each adapter, y[seg] += scale * (x[seg] @ A.T) @ B.T   (matmuls per adapter)
  bmm:  per-token gather of stacked (rank-padded) A and B, then two torch.bmm

Usage: python3 sgmv_baselines.py OURS.csv TABLE.md [OURS_V2.csv]
(the optional third file adds a column with the previous kernel version's times)
"""

import csv
import sys

import torch

MIXED = [8, 16, 64]
ROTATIONS = 2


def generated(rows, cols, phase, amp):
    r = torch.arange(rows, device="cuda", dtype=torch.float32) * 0.37 + phase
    c = torch.arange(cols, device="cuda", dtype=torch.float32) * 0.91
    return (torch.sin(r[:, None] + c[None, :]) * amp).to(torch.bfloat16)


def lengths(tokens, n):
    return [tokens // n + (1 if i < tokens % n else 0) for i in range(n)]


# L2 flush: a reduction reads 256 MiB (clean lines; a memset would leave dirty ones)
FLUSH = torch.zeros(64 << 20, dtype=torch.float32, device="cuda")


def median_ms(fn, reps, warmup=2):
    """Median ms of graph replays of fn(k) for rotation k, each after an L2 flush."""
    graphs = []
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for k in range(ROTATIONS):
            for _ in range(warmup):
                fn(k)
    torch.cuda.current_stream().wait_stream(side)
    for k in range(ROTATIONS):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn(k)
        graphs.append(g)
    for k in range(ROTATIONS):
        graphs[k].replay()
    times = []
    for i in range(reps):
        FLUSH.sum()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graphs[i % ROTATIONS].replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    del graphs
    return times[len(times) // 2]


def run(row):
    d_in, d_out, t, n = (int(row[k]) for k in ("d_in", "d_out", "tokens", "adapters"))
    rank_of = (lambda i: MIXED[i % len(MIXED)]) if row["rank"] == "mixed" else (lambda i, r=int(row["rank"]): r)
    a = [generated(rank_of(i), d_in, float(i), 1.0 / d_in**0.5) for i in range(n)]
    b = [generated(d_out, rank_of(i), 0.5 + i, 1.0 / rank_of(i) ** 0.5) for i in range(n)]
    xs = [generated(t, d_in, 100.0 + k, 1.0) for k in range(ROTATIONS)]
    ys = [generated(t, d_out, 200.0 + k, 0.5) for k in range(ROTATIONS)]
    lens = lengths(t, n)
    bounds, lo = [], 0
    for length in lens:
        bounds.append((lo, lo + length))
        lo += length
    scale = 0.5
    weight_bytes = sum(2 * rank_of(i) * (d_in + d_out) for i in range(n))
    reps = 20 if weight_bytes > (256 << 20) else 50

    def loop(k):
        x, y = xs[k], ys[k]
        for s, (lo, hi) in enumerate(bounds):
            if hi > lo:
                y[lo:hi] += scale * ((x[lo:hi] @ a[s].T) @ b[s].T)

    rmax = max(rank_of(i) for i in range(n))
    a_stack = torch.zeros(n, rmax, d_in, dtype=torch.bfloat16, device="cuda")
    b_stack = torch.zeros(n, d_out, rmax, dtype=torch.bfloat16, device="cuda")
    for i in range(n):
        a_stack[i, : rank_of(i)] = a[i]
        b_stack[i, :, : rank_of(i)] = b[i]
    idx = torch.cat([torch.full((length,), s, dtype=torch.long, device="cuda") for s, length in enumerate(lens)])

    def bmm(k):
        x, y = xs[k], ys[k]
        v = torch.bmm(a_stack[idx], x.unsqueeze(-1))
        y += scale * torch.bmm(b_stack[idx], v).squeeze(-1)

    loop_ms = median_ms(loop, reps)
    bmm_ms = median_ms(bmm, reps)
    return loop_ms * 1e3, bmm_ms * 1e3


def main():
    ours_path, table_path = sys.argv[1], sys.argv[2]
    with open(ours_path) as f:
        header = f.readline().strip()
        rows = list(csv.DictReader(f))
    copy_gbs = float(header.split("=")[1])
    v2 = {}
    if len(sys.argv) > 3:
        with open(sys.argv[3]) as f:
            f.readline()
            for r in csv.DictReader(f):
                v2[(r["d_in"], r["d_out"], r["rank"], r["tokens"], r["adapters"])] = float(r["ours_us"])
    lines = [
        f"device: {torch.cuda.get_device_name()}, device-to-device copy {copy_gbs:.0f} GB/s (read + write)",
        "",
        "| d_in x d_out | rank | T | n | ours (us) | GB/s | % of copy | torch loop (us) | gather+bmm (us) | speed-up vs better | v2 (us) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    out = open(table_path, "w")
    out.write("\n".join(lines) + "\n")
    for row in rows:
        key = (row["d_in"], row["d_out"], row["rank"], row["tokens"], row["adapters"])
        loop_us, bmm_us = run(row)
        ours = float(row["ours_us"])
        best = min(loop_us, bmm_us)
        line = (
            f"| {row['d_in']}x{row['d_out']} | {row['rank']} | {row['tokens']} | {row['adapters']} | {ours:.1f} | "
            f"{float(row['gbs']):.0f} | {float(row['pct_copy']):.0f}% | {loop_us:.1f} | {bmm_us:.1f} | {best / ours:.2f}x | "
            f"{v2.get(key, float('nan')):.1f} |"
        )
        out.write(line + "\n")
        out.flush()
        print(line, flush=True)
        torch.cuda.empty_cache()
    out.close()


if __name__ == "__main__":
    main()
