"""The drift judgement of pallet-verification (DriftWindow, DriftLimit) on measured audits.

A verifier scores each job it recomputes: its mean relative error against the commitment
in thousandths of the typical honest error of the format (engine Tolerance's
typical_mean_error). The chain keeps each provider's last W scores of confirmed jobs and
slashes when their median passes the limit. This reads per-job verify reports (the
verify-bench --reports files under bench/results), scores them, and for each window size
prints, per scenario:
  - the share of jobs whose score passes the limit (p),
  - the chance that the median of W jobs passes it: exact, from the binomial law of W
    independent jobs with that p (the median of W is above the limit when at least
    floor(W / 2) + 1 scores are, the lower middle being the median of an even count),
  - the same by resampling the measured jobs (100,000 windows),
for honest scenarios (a false slash) and for cheats that pass the per-job tolerance (a
detection after W of the provider's audits).

Usage: drift_window.py LIMIT TYPICAL REPORTS.jsonl.gz [...] (scenario names from the files)
"""
import gzip
import json
import math
import random
import sys
from collections import defaultdict


def load(paths):
    by = defaultdict(list)
    for p in paths:
        for line in gzip.open(p, "rt"):
            r = json.loads(line)
            if r.get("passes", True):  # only jobs the per-job tolerance let through
                by[r["scenario"]].append(r["mean_relative_error"])
    return by


def above_median_prob(p, w):
    need = w // 2 + 1
    return sum(math.comb(w, k) * p**k * (1 - p) ** (w - k) for k in range(need, w + 1))


def main():
    limit, typical, paths = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    by = load(paths)
    rng = random.Random(7)
    print(f"limit {limit:.0f} (thousandths of the typical error {typical:g}); files: {', '.join(paths)}")
    print("| scenario | jobs passing alone | median score | share above the limit | W | P(median of W above), exact | resampled |")
    print("|---|---|---|---|---|---|---|")
    for name, errors in sorted(by.items()):
        scores = [1000 * e / typical for e in errors]
        s = sorted(scores)
        p = sum(x > limit for x in scores) / len(scores)
        for w in (8, 16, 32):
            exact = above_median_prob(p, w)
            hits = 0
            trials = 100_000
            for _ in range(trials):
                window = sorted(rng.choice(scores) for _ in range(w))
                if window[(w - 1) // 2] > limit:
                    hits += 1
            print(f"| {name} | {len(scores)} | {s[len(s) // 2]:.0f} | {p:.4f} | {w} | {exact:.3g} | {hits / trials:.5f} |")


if __name__ == "__main__":
    main()
