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


class Inputs:
    """One sgmv-bench configuration's inputs (a row of its CSV), as sgmv-bench makes them:
    each adapter's A and B, x and y for each rotation, the segment lengths, the adapters
    stacked (rank-padded with zeros) and the bytes of adapter weights."""

    def __init__(self, row):
        self.d_in, self.d_out, self.t, self.n = (int(row[k]) for k in ("d_in", "d_out", "tokens", "adapters"))
        d_in, d_out, n = self.d_in, self.d_out, self.n
        fixed = None if row["rank"] == "mixed" else int(row["rank"])
        ranks = [MIXED[i % len(MIXED)] if fixed is None else fixed for i in range(n)]
        self.rmax = max(ranks)
        self.a = [generated(ranks[i], d_in, float(i), 1.0 / d_in**0.5) for i in range(n)]
        self.b = [generated(d_out, ranks[i], 0.5 + i, 1.0 / ranks[i] ** 0.5) for i in range(n)]
        self.xs = [generated(self.t, d_in, 100.0 + k, 1.0) for k in range(ROTATIONS)]
        self.ys = [generated(self.t, d_out, 200.0 + k, 0.5) for k in range(ROTATIONS)]
        self.lens = lengths(self.t, n)
        self.a_stack = torch.zeros(n, self.rmax, d_in, dtype=torch.bfloat16, device="cuda")
        self.b_stack = torch.zeros(n, d_out, self.rmax, dtype=torch.bfloat16, device="cuda")
        for i in range(n):
            self.a_stack[i, : ranks[i]] = self.a[i]
            self.b_stack[i, :, : ranks[i]] = self.b[i]
        self.weight_bytes = sum(2 * r * (d_in + d_out) for r in ranks)

    def segment_ids(self, dtype):
        """Each token's adapter index, `dtype` on the GPU."""
        return torch.cat([torch.full((ln,), s, dtype=dtype, device="cuda") for s, ln in enumerate(self.lens)])


def run(row):
    inp = Inputs(row)
    a, b, xs, ys, a_stack, b_stack = inp.a, inp.b, inp.xs, inp.ys, inp.a_stack, inp.b_stack
    bounds, lo = [], 0
    for length in inp.lens:
        bounds.append((lo, lo + length))
        lo += length
    scale = 0.5
    reps = 20 if inp.weight_bytes > (256 << 20) else 50

    def loop(k):
        x, y = xs[k], ys[k]
        for s, (lo, hi) in enumerate(bounds):
            if hi > lo:
                y[lo:hi] += scale * ((x[lo:hi] @ a[s].T) @ b[s].T)

    idx = inp.segment_ids(torch.long)

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
