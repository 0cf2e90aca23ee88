"""Fits the constants of the split decision (`Tiles::split` in kernels/src/cuda/fused.rs).

Input: sgmv-bench CSVs of one device with the split forced off and on
(`OPENLEDGER_SGMV_SPLIT=0|1`: gpu-run-split.sh's ours_fused.csv and ours_split.csv) and the
tiles each variant holds at once (sgmv-bench prints them with OPENLEDGER_SGMV_DEBUG=1; H100:
30 62 264). The fused time is estimated as `estimate_us` does for the variant it picks, the
split's as the shrink alone (`estimate_us` with d_out = 0) plus the "cols" expand
(`estimate_cols_us`), each plus GROUP_TURN_US per turn a warp takes through the tile's
32-column groups (`group_turns_us`); the fit picks SPLIT_LAUNCH_US and GROUP_TURN_US whose
choice loses least against the faster launch of each shape (the cols blocks stream at the
fused kernel's BLOCK_RATE, as `estimate_cols_us` has them).

Usage: python3 fit_split_model.py FUSED.csv SPLIT.csv [CAP_CLUSTER CAP_PAIR CAP_SOLO]
"""
import itertools
import math
import sys

from fit_variant_model import BLOCKS, PAIR_MAX_RANK, estimate, load, tiles

# fused.rs's fitted variant constants
FIXED, BLOCK_RATE, DRAM_RATE = 5.0, 12e3, 3.5e6
FACTOR = {"cluster": 1.0, "pair": 0.9, "solo": 1.5}
WARPS = 8


def est(key, variant, cap, d_in, d_out):
    """estimate_us of shape `key` as d_in x d_out (d_out = 0: the shrink alone)."""
    shape = (str(d_in), str(d_out)) + tuple(key[2:])
    return estimate(shape, variant, cap, FIXED, BLOCK_RATE, DRAM_RATE, FACTOR[variant])


def best_variant(key, caps, d_in, d_out, max_rank):
    """The variant `Tiles::variant` picks and its estimate."""
    usable = [v for v in BLOCKS if not (v == "pair" and max_rank > PAIR_MAX_RANK)]
    return min((est(key, v, caps[v], d_in, d_out), v) for v in usable)


def cols_blocks(tiles_n, caps, d_out):
    groups = -(-d_out // 32)
    most = max(1, -(-groups // WARPS))
    return min(max(1, -(-caps["solo"] // max(1, tiles_n))), most)


def group_turns(blocks, d_out):
    return -(-(-(-d_out // 32)) // (blocks * WARPS))


def est_cols(key, blocks, caps, d_out, launch_us, rate):
    """estimate_cols_us: the expand alone moves what a lora_delta with d_in = 0 would."""
    at_once = caps["solo"]
    per_round = max(1, at_once // blocks)
    shape = ("0", str(d_out)) + tuple(key[2:])
    return launch_us + estimate(shape, "solo", per_round, FIXED, rate, DRAM_RATE, 1.0, blocks)


def main():
    fused, split = load(sys.argv[1]), load(sys.argv[2])
    caps = dict(zip(("cluster", "pair", "solo"), map(int, sys.argv[3:6] or (30, 62, 264))))
    keys = [k for k in fused if k in split]

    def loss(launch_us, turn_us):
        total, worst, picked = 0.0, 0.0, 0
        for k in keys:
            d_in, d_out = int(k[0]), int(k[1])
            recs = tiles(k)
            max_rank = max(r for _, r, _ in recs)
            f, variant = best_variant(k, caps, d_in, d_out, max_rank)
            f += turn_us * group_turns(BLOCKS[variant], d_out)
            blocks = cols_blocks(len(recs), caps, d_out)
            s = (best_variant(k, caps, d_in, 0, max_rank)[0]
                 + est_cols(k, blocks, caps, d_out, launch_us, BLOCK_RATE)
                 + turn_us * group_turns(blocks, d_out))
            chosen = split[k] if s < f else fused[k]
            picked += s < f
            lost = math.log(chosen / min(fused[k], split[k]))
            total += lost
            worst = max(worst, lost)
        return total / len(keys), worst, picked

    grid = itertools.product([-3, -2, -1, -0.5, 0, 0.5, 1, 2], [0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0])
    best = min(grid, key=lambda c: loss(*c)[0])
    mean, worst, picked = loss(*best)
    never = sum(math.log(fused[k] / min(fused[k], split[k])) for k in keys) / len(keys)
    print("SPLIT_LAUNCH_US=%g GROUP_TURN_US=%g: split on %d of %d shapes" % (best + (picked, len(keys))))
    print("choice vs the faster launch: mean loss %.1f%%, worst %.1f%% (never splitting: mean %.1f%%)"
          % (100 * (math.exp(mean) - 1), 100 * (math.exp(worst) - 1), 100 * (math.exp(never) - 1)))


if __name__ == "__main__":
    main()
