#!/usr/bin/env python3
"""Paired bootstrap of hybrid@B against full context: python3 bootstrap.py REPORT.json ...

Resamples questions with replacement (2,000 times, seed 1) and prints the ratio of summed
hybrid F1 to summed full-context F1 with its 95% interval, per budget (docs/eval.md)."""
import json
import random
import sys

for path in sys.argv[1:]:
    runs = json.load(open(path))["runs"]
    f1 = {}
    for r in runs:
        f1.setdefault((r["method"], r["budget"]), {})[r["id"]] = r["f1"]
    full = f1[("full", 0)]
    for budget in (512, 1024, 2048):
        hybrid = f1.get(("hybrid", budget))
        if not hybrid:
            continue
        ids = sorted(i for i in full if i in hybrid)
        random.seed(1)
        ratios = []
        for _ in range(2000):
            s = [random.choice(ids) for _ in ids]
            f = sum(full[i] for i in s)
            if f > 0:
                ratios.append(sum(hybrid[i] for i in s) / f)
        ratios.sort()
        point = sum(hybrid[i] for i in ids) / sum(full[i] for i in ids)
        lo, hi = ratios[int(0.025 * len(ratios))], ratios[int(0.975 * len(ratios))]
        print(f"{path} hybrid@{budget}: {point:.3f} of full, 95% interval {lo:.2f}-{hi:.2f}, n={len(ids)}")
