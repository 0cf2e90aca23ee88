"""vLLM's Triton LoRA kernels (lora_shrink + lora_expand) on the configurations of sgmv-bench.

Issue 21 item 2 asks that our SGMV be at least as fast as vLLM's kernels on every shape of
`sgmv-bench`. vLLM is not a dependency and none of its code is in this repository: the
device call runs its `vllm/lora/ops/triton_ops` files out of the PyPI wheel, extracted into
an ignored folder (`kernels/bench/fetch-vllm-lora.sh`, run here before the call: gpu-bin/vllm_lora).
The few vllm modules those files import besides each other (envs, logger, platforms,
triton_utils, utils) are replaced below by the little they need: plain triton, the
defaults of the environment switches, a logger.

Per configuration of OURS.csv (sgmv-bench's output, with our time), the same inputs as
sgmv_baselines.py (its closed-form generator), then:
  - the call checked against torch (y + scale * (x A^T) B^T per segment);
  - lora_shrink and lora_expand each timed under a grid of launch configurations (vLLM's
    default for the batch and the alternatives below), the best of each kept: "their best
    grid";
  - the pair with those configurations timed together: shrink into the f32 buffer vLLM
    uses, expand adding into y (add_inputs), as one CUDA graph, after a 256 MiB L2 flush,
    median of the replays (sgmv_baselines.median_ms: the same method as the other baselines).
Adapters of mixed ranks are padded to the largest rank, as vLLM stacks them (max_lora_rank).

Usage: python3 vllm_lora_baseline.py OURS.csv TABLE.md VLLM_DIR
"""

import csv
import logging
import math
import os
import sys
import types

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sgmv_baselines import Inputs, median_ms  # noqa: E402

SHRINK_GRID = [  # block_m, block_n, block_k, split_k, num_warps, num_stages
    (16, 16, 128, 32, 4, 2),
    (32, 16, 128, 16, 4, 2),
    (32, 32, 64, 8, 4, 3),
    (64, 16, 64, 4, 4, 3),
    (16, 32, 256, 16, 4, 2),
]
EXPAND_GRID = [  # block_m, block_n, block_k, num_warps, num_stages
    (16, 128, 16, 4, 2),
    (32, 64, 16, 4, 2),
    (64, 64, 32, 4, 2),
    (16, 256, 16, 8, 2),
]


def install_stubs(vllm_dir):
    """The vllm modules the triton_ops files import, reduced to what they use."""

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    root = module("vllm")
    root.__path__ = [os.path.join(vllm_dir, "vllm")]
    envs = module(
        "vllm.envs",
        VLLM_BATCH_INVARIANT=False,
        VLLM_TUNED_CONFIG_FOLDER=None,
        VLLM_LORA_ENABLE_DUAL_STREAM=False,
        VLLM_LORA_DISABLE_PDL=True,
    )
    root.envs = envs

    class Logger(logging.LoggerAdapter):
        def warning_once(self, msg, *a, **k):
            pass

        def info_once(self, msg, *a, **k):
            pass

    module("vllm.logger", init_logger=lambda name: Logger(logging.getLogger(name), {}))
    cap = torch.cuda.get_device_capability()

    class Platform:
        def is_cuda(self):
            return True

        def is_device_capability(self, c):
            return cap[0] * 10 + cap[1] == c

        def has_device_capability(self, c):
            return cap[0] * 10 + cap[1] >= c

    module("vllm.platforms", current_platform=Platform())
    module("vllm.triton_utils", tl=tl, triton=triton)
    utils = module("vllm.utils")
    utils.__path__ = []

    def no_custom_op(**kwargs):
        raise AttributeError("not registered: the plain function is called")

    def h2d(values, dtype, device):
        return torch.tensor(values, dtype=dtype, device="cpu").pin_memory().to(device, non_blocking=True)

    module("vllm.utils.torch_utils", direct_register_custom_op=no_custom_op, async_tensor_h2d=h2d)
    module("vllm.utils.math_utils", next_power_of_2=lambda n: 1 << max(0, (n - 1).bit_length()))
    import importlib

    ops = "vllm.lora.ops.triton_ops."
    shrink = importlib.import_module(ops + "lora_shrink_op")
    expand = importlib.import_module(ops + "lora_expand_op")
    meta = importlib.import_module(ops + "lora_kernel_metadata")
    return shrink, expand, meta.LoRAKernelMeta


CONFIG = {"shrink": None, "expand": None}


def configs(op_type, max_loras, batch, hidden_size, rank, num_slices, add_inputs=None, **_):
    """Replaces vLLM's get_lora_op_configs: the configuration under test."""
    return CONFIG[op_type]


def shrink_config(c):
    bm, bn, bk, sk, w, s = c
    return {"block_m": bm, "block_n": bn, "block_k": bk, "split_k": sk, "num_warps": w,
            "num_ctas": 1, "group_size_m": 8, "num_stages": s, "max_nreg": None}


def expand_config(c):
    bm, bn, bk, w, s = c
    return {"block_m": bm, "block_n": bn, "block_k": bk, "num_warps": w, "num_ctas": 1,
            "num_stages": s, "max_nreg": None}


def default_shrink(t):
    return (32, 16, 256 if t < 128 else 32, 64 if t < 128 else 8, 4, 2)


def default_expand():
    return (64, 128, 32, 4, 2)


def run(row, shrink_mod, expand_mod, Meta):
    inp = Inputs(row)
    t, n, rmax, lens = inp.t, inp.n, inp.rmax, inp.lens
    a, b, xs, ys, a_stack, b_stack = inp.a, inp.b, inp.xs, inp.ys, inp.a_stack, inp.b_stack
    scale = 0.5
    meta = Meta.make(max_loras=n, max_num_tokens=t, device="cuda")
    meta.prepare_tensors(inp.segment_ids(torch.int32))
    args = meta.meta_args(t, specialize_active_lora=True)
    buf = torch.zeros(1, t, rmax, dtype=torch.float32, device="cuda")
    reps = 20 if inp.weight_bytes > (256 << 20) else 30

    def shrink(k):
        shrink_mod._lora_shrink(xs[k], [a_stack], buf, *args, scale)

    def expand(k):
        expand_mod._lora_expand(buf, [b_stack], ys[k], *args, offset_start=0, add_inputs=True)

    def both(k):
        shrink(k)
        expand(k)

    # Correctness of the call (default configurations), on a copy of y.
    CONFIG["shrink"], CONFIG["expand"] = shrink_config(default_shrink(t)), expand_config(default_expand())
    y0 = ys[0].clone()
    want = ys[0].float().clone()
    lo = 0
    for s, ln in enumerate(lens):
        if ln:
            want[lo:lo + ln] += scale * ((xs[0][lo:lo + ln].float() @ a[s].float().T) @ b[s].float().T)
        lo += ln
    both(0)
    err = ((ys[0].float() - want).norm() / want.norm()).item()
    ys[0].copy_(y0)
    best = {}
    for op, grid, make, fn in (("shrink", [default_shrink(t)] + SHRINK_GRID, shrink_config, shrink),
                               ("expand", [default_expand()] + EXPAND_GRID, expand_config, expand)):
        timed = []
        for c in grid:
            CONFIG[op] = make(c)
            try:
                timed.append((median_ms(fn, reps) * 1e3, c))
            except Exception as e:  # a configuration the shape cannot take
                print(f"  {op} {c}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
        timed.sort()
        best[op] = timed[0]
        CONFIG[op] = make(timed[0][1])
    pair_us = median_ms(both, reps) * 1e3
    default_cfg = (shrink_config(default_shrink(t)), expand_config(default_expand()))
    CONFIG["shrink"], CONFIG["expand"] = default_cfg
    default_us = median_ms(both, reps) * 1e3
    return err, pair_us, default_us, best


def main():
    ours_path, table_path, vllm_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    shrink_mod, expand_mod, Meta = install_stubs(vllm_dir)
    shrink_mod.get_lora_op_configs = configs
    expand_mod.get_lora_op_configs = configs
    with open(ours_path) as f:
        header = f.readline().strip()
        rows = list(csv.DictReader(f))
    lines = [
        f"device: {torch.cuda.get_device_name()}, {header}; vLLM triton_ops from {vllm_dir}",
        "",
        "| d_in x d_out | rank | T | n | ours (us) | vLLM best grid (us) | vLLM default (us) | ours faster by | shrink / expand best (us) | max rel. error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    out = open(table_path, "w")
    out.write("\n".join(lines) + "\n")
    ratios = []
    for row in rows:
        err, pair, default, best = run(row, shrink_mod, expand_mod, Meta)
        ours = float(row["ours_us"])
        vbest = min(pair, default)
        ratios.append((vbest / ours, row))
        line = (f"| {row['d_in']}x{row['d_out']} | {row['rank']} | {row['tokens']} | {row['adapters']} | "
                f"{ours:.1f} | {pair:.1f} | {default:.1f} | {vbest / ours:.2f}x | "
                f"{best['shrink'][0]:.1f} / {best['expand'][0]:.1f} | {err:.1e} |")
        out.write(line + "\n")
        out.flush()
        print(line, flush=True)
        torch.cuda.empty_cache()
    slower = [(r, row) for r, row in ratios if r < 1.0]
    geo = math.exp(sum(math.log(r) for r, _ in ratios) / max(1, len(ratios)))
    summary = [
        "",
        f"shapes: {len(ratios)}; ours faster on {len(ratios) - len(slower)}, slower on {len(slower)}; "
        f"geometric mean speed-up {geo:.2f}x",
    ]
    for r, row in sorted(slower, key=lambda p: p[0])[:40]:
        summary.append(f"slower: {row['d_in']}x{row['d_out']} r{row['rank']} T{row['tokens']} n{row['adapters']}: {r:.2f}x")
    out.write("\n".join(summary) + "\n")
    out.close()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
