"""PyTorch baselines for the paged decode attention benchmark, on the configurations and data
of attn-bench.

Reads the CSV that `attn-bench` wrote (one row per configuration, with our time and the
copy bandwidth of the run), rebuilds the same caches, queries and shuffled block tables with
the same closed-form generator, times two baselines the same way (CUDA graph replay, 256 MiB
memset before each repetition to flush L2, events, median of 100 after warm-up), and prints
the joined markdown table and a summary.

  gather+sdpa: k_cache[block_tables] -> [B, kv_heads, ctx, D] (the paged gather), then
               torch.nn.functional.scaled_dot_product_attention(enable_gqa=True)
  sdpa:        the same SDPA on K/V already contiguous (no gather; what a dense cache costs)

Usage: python3 attn_baseline.py OURS.csv TABLE.md [OURS_ALT.csv LABEL]...
(each optional pair adds a column with another run of ours: the first kernel version, another
partition size)
"""

import csv
import statistics
import sys

import torch
import torch.nn.functional as F

BLOCK_SIZE = 16
PATTERN_ROWS = 65536
SHUFFLE = 7919
FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")


def generated(rows, cols, phase, amp):
    r = torch.arange(rows, device="cuda", dtype=torch.float32) * 0.37 + phase
    c = torch.arange(cols, device="cuda", dtype=torch.float32) * 0.91
    return (torch.sin(r[:, None] + c[None, :]) * amp).to(torch.bfloat16)


def cache(rows, cols, phase):
    pattern = generated(min(PATTERN_ROWS, rows), cols, phase, 1.0)
    copies = -(-rows // PATTERN_ROWS)
    return pattern.repeat(copies, 1)[:rows].contiguous()


def median_ms(fn, reps=100, warmup=3):
    """Median ms of graph replays of fn, each after an L2 flush."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    g.replay()
    times = []
    for _ in range(reps):
        FLUSH.zero_()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    result = out.clone()
    del g
    return times[len(times) // 2], result


def run(row):
    heads, kv, d, b, ctx = (int(row[k]) for k in ("heads", "kv_heads", "head_dim", "batch", "context"))
    per_seq = ctx // BLOCK_SIZE
    num_blocks = b * per_seq
    rows = num_blocks * BLOCK_SIZE * kv
    k_cache = cache(rows, d, 0.0).view(num_blocks, BLOCK_SIZE, kv, d)
    v_cache = cache(rows, d, 0.5).view(num_blocks, BLOCK_SIZE, kv, d)
    q = generated(b * heads, d, 7.0, 1.0).view(b, heads, 1, d)
    j = torch.arange(num_blocks, device="cuda", dtype=torch.int64)
    tables = ((j * SHUFFLE + 13) % num_blocks).view(b, per_seq)
    scale = 1.0 / d**0.5

    def gathered(c):
        return c[tables].view(b, ctx, kv, d).transpose(1, 2)

    def paged():
        return F.scaled_dot_product_attention(q, gathered(k_cache), gathered(v_cache), scale=scale, enable_gqa=True)

    t_paged, out_paged = median_ms(paged)
    k_dense = gathered(k_cache).contiguous()
    v_dense = gathered(v_cache).contiguous()

    def dense():
        return F.scaled_dot_product_attention(q, k_dense, v_dense, scale=scale, enable_gqa=True)

    t_dense, out_dense = median_ms(dense)
    diff = (out_paged.float() - out_dense.float()).abs().max().item()
    del k_cache, v_cache, k_dense, v_dense
    torch.cuda.empty_cache()
    return t_paged * 1e3, t_dense * 1e3, diff


def main():
    ours_path, table_path = sys.argv[1], sys.argv[2]
    alts = []
    for path, label in zip(sys.argv[3::2], sys.argv[4::2]):
        with open(path) as f:
            lines = [l for l in f if not l.startswith("#")]
        alts.append((label, {(r["shape"], r["batch"], r["context"]): float(r["ours_us"]) for r in csv.DictReader(lines)}))
    with open(ours_path) as f:
        first = f.readline()
        copy_gbs = float(first.split("=")[1])
        rows = list(csv.DictReader(f))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, copy {copy_gbs:.0f} GB/s", flush=True)
    head = "| shape | batch | context | ours (us) | GB/s | % of copy | torch gather+SDPA (us) | speedup | torch SDPA, contiguous KV (us) | speedup |"
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    for label, _ in alts:
        head += f" ours, {label} (us) |"
        sep += "---|"
    lines = [f"Copy bandwidth (device-to-device, read + write): {copy_gbs:.0f} GB/s", "", head, sep]
    bound_pct, speedups, dense_speedups = [], [], []
    for row in rows:
        t_paged, t_dense, diff = run(row)
        ours = float(row["ours_us"])
        b, ctx = int(row["batch"]), int(row["context"])
        pct = float(row["pct_copy"])
        if b * ctx >= 65536:
            bound_pct.append(pct)
        speedups.append(t_paged / ours)
        dense_speedups.append(t_dense / ours)
        line = (
            f"| {row['shape']} | {b} | {ctx} | {ours:.1f} | {float(row['gbs']):.0f} | {pct:.0f}% "
            f"| {t_paged:.1f} | {t_paged / ours:.2f}x | {t_dense:.1f} | {t_dense / ours:.2f}x |"
        )
        for _, alt in alts:
            a = alt.get((row["shape"], row["batch"], row["context"]))
            line += f" {a:.1f} |" if a is not None else " - |"
        lines.append(line)
        print(line + f"  (baselines differ by {diff:.2e})", flush=True)
    summary = [
        "",
        f"memory-bound (batch x context >= 64k): median {statistics.median(bound_pct):.0f}% of copy, "
        f"min {min(bound_pct):.0f}%, max {max(bound_pct):.0f}% over {len(bound_pct)} configurations",
        f"speedup vs torch gather+SDPA: min {min(speedups):.2f}x, median {statistics.median(speedups):.2f}x",
        f"speedup vs torch SDPA on contiguous KV: min {min(dense_speedups):.2f}x, "
        f"median {statistics.median(dense_speedups):.2f}x",
    ]
    lines += summary
    with open(table_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
