"""Fits the constants of v3's variant cost model (`estimate_us` in kernels/src/cuda/fused.rs).

Input: sgmv-bench CSVs of the same device with each variant forced
(`OPENLEDGER_SGMV_VARIANT=cluster|pair|solo`, gpu-run.sh's BENCH_VARIANTS), and the number
of tiles of each variant the device holds at once (sgmv-bench prints it with
OPENLEDGER_SGMV_DEBUG=1). Output: the constants whose choice loses least against the fastest
variant of each shape (mean of log(chosen time / fastest time)), and that loss.

Usage: python3 fit_variant_model.py CLUSTER.csv PAIR.csv SOLO.csv [CAP_CLUSTER CAP_PAIR CAP_SOLO]
The constants in fused.rs were fitted on an H200 (2026-11-28) with capacities 30 62 264, from
gpu-run.sh runs with BENCH_VARIANTS="cluster pair solo" (its ours_<variant>.csv). Those CSVs
are no longer in the tree; git keeps them:
  git show 54ffa69:kernels/bench/results/h200-v3-run1-cluster.csv   (likewise -run2-pair, -run1-solo)
"""
import csv
import itertools
import math
import sys

MIXED = [8, 16, 64]  # sgmv-bench's "mixed" ranks, cycled over the adapters
TILE_TOKENS = 16
BLOCKS = {"cluster": 8, "pair": 4, "solo": 1}
PAIR_MAX_RANK = 64


def load(path):
    with open(path) as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")][1:]
    return {tuple(r[:5]): float(r[5]) for r in rows}


def tiles(key):
    """(slot, rank, rows) per tile, as fused.rs's `records` cuts sgmv-bench's segments."""
    rank, t, n = key[2], int(key[3]), int(key[4])
    out = []
    for i in range(n):
        length = t // n + (1 if i < t % n else 0)
        r = MIXED[i % len(MIXED)] if rank == "mixed" else int(rank)
        p = 0
        while p < length:
            end = min(length, p + TILE_TOKENS)
            out.append((i, r, end - p))
            p = end
    return out


def estimate(key, variant, cap, fixed, block_rate, dram_rate, factor, blocks=None):
    """fused.rs's estimate_us (`blocks`: blocks a tile, the variant's unless given)."""
    d_in, d_out = int(key[0]), int(key[1])
    blocks = blocks or BLOCKS[variant]
    recs = tiles(key)
    total = 0.0
    for s in range(0, len(recs), cap):
        largest, moved, prev = 0.0, 0.0, None
        for slot, rank, rows in recs[s:s + cap]:
            weights = 2.0 * rank * (d_in + d_out)
            acts = 2.0 * rows * (d_in + 2 * d_out)
            largest = max(largest, weights + acts)
            moved += acts + (0.0 if prev == slot else weights)
            prev = slot
        total += fixed + max(largest / (blocks * block_rate), moved / dram_rate)
    return total * factor


def main():
    times = {"cluster": load(sys.argv[1]), "pair": load(sys.argv[2]), "solo": load(sys.argv[3])}
    caps = dict(zip(("cluster", "pair", "solo"), map(int, sys.argv[4:7] or (30, 62, 264))))
    keys = list(times["cluster"])

    def loss(fixed, block_rate, dram_rate, pair_factor, solo_factor):
        factors = {"cluster": 1.0, "pair": pair_factor, "solo": solo_factor}
        total, worst = 0.0, 0.0
        for k in keys:
            usable = [v for v in times if k in times[v]]
            if k[2] != "mixed" and int(k[2]) > PAIR_MAX_RANK:
                usable = [v for v in usable if v != "pair"]
            pick = min(usable, key=lambda v: estimate(k, v, caps[v], fixed, block_rate, dram_rate, factors[v]))
            lost = math.log(times[pick][k] / min(times[v][k] for v in usable))
            total += lost
            worst = max(worst, lost)
        return total / len(keys), worst

    grid = itertools.product([2, 3, 4, 5, 6], [6e3, 8e3, 10e3, 12e3, 15e3, 20e3],
                             [2e6, 2.5e6, 3e6, 3.5e6], [0.8, 0.9, 1.0], [1.0, 1.2, 1.5])
    best = min(grid, key=lambda c: loss(*c)[0])
    mean, worst = loss(*best)
    print("FIXED_US=%g BLOCK_BYTES_PER_US=%g DRAM_BYTES_PER_US=%g pair=%g solo=%g" % best)
    print("choice vs fastest variant: mean loss %.1f%%, worst %.1f%%"
          % (100 * (math.exp(mean) - 1), 100 * (math.exp(worst) - 1)))


if __name__ == "__main__":
    main()
