#!/usr/bin/env python3
"""Fits and checks a verification tolerance on `verify-bench --reports` files (issue 23).

Each line of a reports file is one verified job: its scenario, the batch size and CUDA-graph
mode it was generated with, and the verifier's findings (entries compared, value and index
mismatches counted at the run's `relative`, mean and largest relative error of the committed
values, replayed tokens and mismatches under the run's near-tie rule, and the largest
near-tie gap of a replayed token). This prints the honest jobs' worst findings per batch
size and graph mode, the bounds they suggest, and how every scenario fares under a
tolerance (the one given, or the suggested one): the verdict `VerifyReport::passes`
computes, with two bounds moved after the run, which the reports determine exactly:
- `--mean` (max_mean_relative_error): compared with each job's mean error;
- `--replay-share` (max_replay_mismatch_share): the replayed tokens counted as mismatches
  at the run's near tie, over those replayed; or `--tie` (replay_tie) with no mismatch
  allowed: a job's replay passes when its largest gap is within the tie;
- `--value-share`, `--index-share`: the value and index mismatches counted at the run's
  `relative` and slack (those two cannot move after the run);
- adapted jobs' delta entries (reports that carry them): `--delta-mean`
  (max_delta_mean_relative_error), `--delta-value-share` and `--delta-index-share`
  (delta mismatches counted at the run's `delta_relative`), and the layout check (a claim
  whose commitment has delta entries exactly when the claim has an adapter).

  python3 bench/scripts/fit_tolerance.py reports_graphs.jsonl reports_eager.jsonl \
      reports_cheats.jsonl [--mean M] [--tie T | --replay-share R] [--value-share V] \
      [--index-share I] [--margin 2]      (files may be gzipped)
"""
import argparse
import gzip
import json
from collections import defaultdict


def share(n, d):
    return n / d if d else 0.0


def replay_ok(r, tie, replay_share):
    if tie is not None:
        return r["max_replay_gap"] <= tie
    return share(r["replay_mismatches"], r["replayed_tokens"]) <= replay_share


def delta_ok(r, a):
    if r.get("layout_mismatch"):
        return False
    n = r.get("delta_entries", 0)
    return (
        share(r.get("delta_value_mismatches", 0), n) <= a.delta_value_share
        and share(r.get("delta_index_mismatches", 0), n) <= a.delta_index_share
        and r.get("delta_mean_relative_error", 0.0) <= a.delta_mean
    )


def passes(r, mean, tie, replay_share, value_share, index_share, a=None):
    return (
        r["tokens_match"]
        and (a is None or delta_ok(r, a))
        and replay_ok(r, tie, replay_share)
        and share(r["value_mismatches"], r["entries"]) <= value_share
        and share(r["index_mismatches"], r["entries"]) <= index_share
        and r["mean_relative_error"] <= mean
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--mean", type=float)
    ap.add_argument("--tie", type=float)
    ap.add_argument("--replay-share", type=float, default=0.0)
    ap.add_argument("--value-share", type=float, default=0.05)
    ap.add_argument("--index-share", type=float, default=0.10)
    ap.add_argument("--delta-mean", type=float, default=0.05)
    ap.add_argument("--delta-value-share", type=float, default=0.25)
    ap.add_argument("--delta-index-share", type=float, default=0.25)
    ap.add_argument("--margin", type=float, default=2.0,
                    help="suggested bounds = the worst honest job's x this")
    a = ap.parse_args()
    jobs = []
    for path in a.reports:
        for line in (gzip.open(path, "rt") if path.endswith(".gz") else open(path)):
            line = line.strip()
            if line.startswith("{"):
                j = json.loads(line)
                # JSON has no infinity: serde writes null for it.
                for k in ("max_replay_gap", "max_relative_error", "mean_relative_error",
                          "delta_mean_relative_error", "delta_max_relative_error"):
                    if k not in j:
                        continue
                    if j[k] is None:
                        j[k] = float("inf")
                jobs.append(j)
    honest = [j for j in jobs if j["scenario"].startswith("honest")]
    groups = defaultdict(list)
    for j in honest:
        groups[(j["scenario"], j["batch"], j["graphs"])].append(j)
    print("honest jobs, worst per group:")
    print("| scenario | batch | graphs | jobs | mean error, worst | max error | value mismatch share | index mismatch share | replay gap, worst | replayed tokens differing |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for (s, b, g), js in sorted(groups.items()):
        print(f"| {s} | {b} | {'on' if g else 'off'} | {len(js)} "
              f"| {max(j['mean_relative_error'] for j in js):.5f} "
              f"| {max(j['max_relative_error'] for j in js):.5f} "
              f"| {max(share(j['value_mismatches'], j['entries']) for j in js):.3f} "
              f"| {max(share(j['index_mismatches'], j['entries']) for j in js):.3f} "
              f"| {max(j['max_replay_gap'] for j in js):.5f} "
              f"| {sum(1 for j in js if j['max_replay_gap'] > 0)} jobs |")
    adapted = [j for j in honest if j.get("delta_entries", 0) > 0]
    if adapted:
        print("\nhonest adapted jobs' delta entries, worst per group:")
        print("| scenario | batch | graphs | jobs | delta mean error, worst | delta max error | delta value mismatch share | delta index mismatch share |")
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        dg = defaultdict(list)
        for j in adapted:
            dg[(j["scenario"], j["batch"], j["graphs"])].append(j)
        for (s, b, g), js in sorted(dg.items()):
            print(f"| {s} | {b} | {'on' if g else 'off'} | {len(js)} "
                  f"| {max(j['delta_mean_relative_error'] for j in js):.5f} "
                  f"| {max(j['delta_max_relative_error'] for j in js):.5f} "
                  f"| {max(share(j['delta_value_mismatches'], j['delta_entries']) for j in js):.3f} "
                  f"| {max(share(j['delta_index_mismatches'], j['delta_entries']) for j in js):.3f} |")
        dm = sorted(j["delta_mean_relative_error"] for j in adapted)
        print(f"honest delta mean error: median {dm[len(dm) // 2]:.5f}, "
              f"99.9th percentile {dm[min(len(dm) - 1, int(len(dm) * 0.999))]:.5f}, worst {dm[-1]:.5f}")
    worst_mean = max(j["mean_relative_error"] for j in honest)
    worst_gap = max(j["max_replay_gap"] for j in honest)
    mean = a.mean if a.mean is not None else worst_mean * a.margin
    tie = a.tie
    replay = (f"replay gap <= {tie:.5f}" if tie is not None
              else f"replayed tokens off (at the run's tie) <= {a.replay_share:.3f}")
    print(f"\nworst honest job: mean error {worst_mean:.5f}, replay gap {worst_gap:.5f}, "
          f"replayed tokens off {max(share(j['replay_mismatches'], j['replayed_tokens']) for j in honest):.3f}; "
          f"checked with mean <= {mean:.5f}, {replay}, value share <= {a.value_share}, "
          f"index share <= {a.index_share}; delta: mean <= {a.delta_mean}, value share <= "
          f"{a.delta_value_share}, index share <= {a.delta_index_share}, layout checked")
    by = defaultdict(list)
    for j in jobs:
        by[(j["scenario"], j["graphs"])].append(j)
    print("\n| scenario | graphs | jobs | refused | rate | refused by: mean / replay / value / index / coverage / delta (layout) | job mean error, lowest - highest | job delta mean error, lowest - highest |")
    print("|---|---|---:|---:|---:|---|---|---|")
    for (s, g), js in sorted(by.items()):
        refused = [j for j in js
                   if not passes(j, mean, tie, a.replay_share, a.value_share, a.index_share, a)]
        why = [
            sum(1 for j in js if j["mean_relative_error"] > mean),
            sum(1 for j in js if not replay_ok(j, tie, a.replay_share)),
            sum(1 for j in js if share(j["value_mismatches"], j["entries"]) > a.value_share),
            sum(1 for j in js if share(j["index_mismatches"], j["entries"]) > a.index_share),
            sum(1 for j in js if not j["tokens_match"]),
        ]
        delta = f"{sum(1 for j in js if not delta_ok(j, a))} ({sum(1 for j in js if j.get('layout_mismatch'))})"
        means = [j["mean_relative_error"] for j in js]
        dmeans = [j["delta_mean_relative_error"] for j in js if j.get("delta_entries", 0) > 0]
        drange = f"{min(dmeans):.4f} - {max(dmeans):.4f}" if dmeans else "-"
        print(f"| {s} | {'on' if g else 'off'} | {len(js)} | {len(refused)} | {100 * len(refused) / len(js):.2f}% "
              f"| {' / '.join(map(str, why))} / {delta} | {min(means):.5f} - {max(means):.5f} | {drange} |")


if __name__ == "__main__":
    main()
