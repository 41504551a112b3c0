# Pools per-question outcomes of several `eval recall --per-question` files and prints recall
# per method and budget with a paired bootstrap 95% interval of rerank minus the best baseline.
import json, random, sys
from collections import defaultdict
hit = defaultdict(dict)
for f in sys.argv[1:]:
    for line in open(f):
        if line.strip():
            r = json.loads(line)
            hit[(r["method"], r["budget"])][r["id"]] = 1 if r["hit"] else 0
budgets = sorted({b for _, b in hit})
methods = sorted({m for m, _ in hit})
ids = sorted(hit[(methods[0], budgets[0])])
print(f"{len(ids)} questions")
for m in methods:
    print(m, " ".join(f"{100*sum(hit[(m,b)][i] for i in ids)/len(ids):.1f}%" for b in budgets))
rng = random.Random(7)
for b in budgets:
    base = max(["bm25", "rag"], key=lambda m: sum(hit[(m, b)][i] for i in ids))
    d = [hit[("rerank", b)][i] - hit[(base, b)][i] for i in ids]
    boots = sorted(sum(rng.choice(d) for _ in d) / len(d) for _ in range(10000))
    print(f"@{b}: rerank - {base} = {100*sum(d)/len(d):+.1f} [{100*boots[250]:+.1f}, {100*boots[9749]:+.1f}]")
