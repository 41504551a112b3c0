"""Picks the re-ranking configuration from `s3mem eval heads --out` JSON: the head set and
first-stage weight with the highest simulated recall summed over the budgets (ties: fewer
heads, then the smaller weight). Prints `HEADS WEIGHT`. The rule chose SmolLM2's set in
session 8 (docs/retrieval.md)."""
import json, re, sys

d = json.load(open(sys.argv[1]))
best = None
for s in d["sets"]:
    m = re.match(r"top (\d+) heads(?:, first stage ([0-9.]+))?$", s["ranking"])
    if not m:
        continue
    n, w = int(m.group(1)), float(m.group(2) or 0)
    key = (sum(r for _, r in s["recall"]), -n, -w)
    if best is None or key > best[0]:
        best = (key, s["heads"], w)
print(best[1], best[2])
