"""PyTorch baselines for the causal prefill attention benchmark, on the shapes of
prefill-attn-bench.

Reads the CSV that `prefill-attn-bench` wrote (one row per configuration with our time and
TFLOP/s), times PyTorch's scaled_dot_product_attention on the same shapes (q, k, v
[chunks, heads, len, head_dim] bf16, contiguous, is_causal=True, GQA through enable_gqa;
no paging: the keys and values sit contiguous, which costs the baseline nothing) the same
way (CUDA graph replay, a 256 MiB memset before each repetition to flush L2, events, median
of 100 after warm-up), with each backend forced in turn (FlashAttention-2 inside PyTorch,
cuDNN, memory-efficient) and with PyTorch's own choice, and flash_attn's own kernel where
that package is installed. Prints the joined markdown table; a chunk after a cached prefix
(start > 0) has no is_causal equivalent in SDPA and is shown for ours alone.

Usage: python3 prefill_attn_baseline.py OURS.csv TABLE.md
"""

import csv
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")


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
        fn()
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
    return statistics.median(times)


BACKENDS = [
    ("flash", [SDPBackend.FLASH_ATTENTION]),
    ("cudnn", [SDPBackend.CUDNN_ATTENTION]),
    ("efficient", [SDPBackend.EFFICIENT_ATTENTION]),
    ("default", None),
]


def sdpa_time(q, k, v, backends, gqa):
    def run():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    if backends is None:
        return median_ms(run)
    with sdpa_kernel(backends):
        return median_ms(run)


def main():
    ours_path, table_path = sys.argv[1], sys.argv[2]
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    try:
        from flash_attn import flash_attn_func  # noqa: F401

        have_fa = True
    except Exception as e:  # not installed on the device image: say so and go on
        print("flash_attn package: not available:", type(e).__name__)
        have_fa = False
    rows = list(csv.DictReader(open(ours_path)))
    names = [b for b, _ in BACKENDS] + (["flash_attn"] if have_fa else [])
    lines = [
        "| shape | chunks x len | start | ours us | ours TFLOP/s | "
        + " | ".join(f"{n} us (TFLOP/s)" for n in names)
        + " | ours / best |",
        "|---|---|---|---|---|" + "---|" * len(names) + "---|",
    ]
    torch.manual_seed(3)
    for r in rows:
        heads, kv, hd = int(r["heads"]), int(r["kv_heads"]), int(r["head_dim"])
        chunks, n, start = int(r["chunks"]), int(r["len"]), int(r["start"])
        ours_us, ours_tf = float(r["ours_us"]), float(r["tflops"])
        flops = 4.0 * chunks * (n * start + n * (n + 1) / 2) * heads * hd
        cells, best = [], None
        if start == 0:
            q = torch.randn(chunks, heads, n, hd, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(chunks, kv, n, hd, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(chunks, kv, n, hd, device="cuda", dtype=torch.bfloat16)
            for name, backends in BACKENDS:
                try:
                    ms = sdpa_time(q, k, v, backends, kv != heads)
                except Exception as e:
                    # A backend that refuses GQA gets the key/value heads repeated (outside
                    # the timed region): the same FLOPs.
                    try:
                        rep = heads // kv
                        k2 = k.repeat_interleave(rep, 1)
                        v2 = v.repeat_interleave(rep, 1)
                        ms = sdpa_time(q, k2, v2, backends, False)
                        name += " (kv repeated)"
                    except Exception as e2:
                        print(f"{r['shape']} {chunks}x{n}: {name} failed: {e2!s:.120}")
                        cells.append("-")
                        continue
                us = ms * 1e3
                best = us if best is None else min(best, us)
                cells.append(f"{us:.1f} ({flops / (ms * 1e-3) / 1e12:.0f})")
                print(f"{r['shape']} {chunks}x{n}: {name} {us:.1f} us", flush=True)
            if have_fa:
                from flash_attn import flash_attn_func

                qf, kf, vf = (t.transpose(1, 2).contiguous() for t in (q, k, v))
                ms = median_ms(lambda: flash_attn_func(qf, kf, vf, causal=True))
                us = ms * 1e3
                best = min(best, us) if best else us
                cells.append(f"{us:.1f} ({flops / (ms * 1e-3) / 1e12:.0f})")
        else:
            cells = ["-"] * len(names)
        ratio = f"{ours_us / best:.2f}" if best else "-"
        lines.append(
            f"| {r['shape']} | {chunks} x {n} | {start} | {ours_us:.1f} | {ours_tf:.0f} | "
            + " | ".join(cells)
            + f" | {ratio} |"
        )
    table = "\n".join(lines)
    open(table_path, "w").write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
