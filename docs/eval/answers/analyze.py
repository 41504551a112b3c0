#!/usr/bin/env python3
"""Tables of docs/eval.md "Readers and answer modes" from `s3mem eval` reports.

usage: analyze.py DIR   (DIR holds dev-R/, devrm-R/ and test-R/ report folders per reader R)
Auto mode is derived from the free and quote runs of the same prefill by its rule (quote,
free for yes/no questions), so it costs no run of its own; rival rules are scored the same way.
"""
import json, os, statistics, sys

YES_NO = {"is", "are", "was", "were", "do", "does", "did", "can", "could", "has", "have", "had",
          "will", "would", "should", "am"}
CORRECT = 0.5

def load(path):
    with open(os.path.join(path, "report.json")) as f:
        r = json.load(f)
    qs = {}
    for run in r["runs"]:
        qs.setdefault(run["id"], {})[run["mode"]] = run
    return qs

def questions(dataset):
    out = {}
    with open(dataset) as f:
        for line in f:
            it = json.loads(line)
            out[it["_id"]] = it["input"]
    return out

def yes_no(q):
    w = q.split()
    return bool(w) and w[0].strip('"\'').lower() in YES_NO

RULES = {
    "free": lambda q: "free",
    "quote": lambda q: "quote",
    "auto (quote; free for yes/no)": lambda q: "free" if yes_no(q) else "quote",
    "quote if <= 12 words": lambda q: "quote" if len(q.split()) <= 12 else "free",
}

def score(qs, texts, rule, threshold=None):
    f1, em, ms, out = [], [], [], {"correct": 0, "abstained": 0, "wrong": 0}
    for qid, modes in qs.items():
        if "free" not in modes or "quote" not in modes:
            continue
        m = RULES[rule](texts.get(qid, texts.get(qid.removesuffix("-removed"), "")))
        run = modes[m]
        f1.append(run["f1"]); em.append(run["em"])
        ms.append(run["context_ms"] + run["prefill_ms"] + run["decode_ms"])
        c = run["confidence"]
        if threshold is not None and (c is None or c < threshold):
            out["abstained"] += 1
        elif run["f1"] >= CORRECT:
            out["correct"] += 1
        else:
            out["wrong"] += 1
    n = len(f1)
    return n, 100 * statistics.mean(f1), 100 * statistics.mean(em), statistics.median(ms) / 1e3, \
        {k: 100 * v / n for k, v in out.items()}

def main():
    d = sys.argv[1]
    thresholds = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    dev = questions("/work/data/hp-dev.jsonl")
    test = questions("/work/data/hp-test.jsonl")
    for reader in ["smollm2-135m", "qwen2.5-coder-0.5b"]:
        for split, texts in [("dev", dev), ("devrm", dev), ("test", test)]:
            path = os.path.join(d, f"{split}-{reader}")
            if not os.path.exists(os.path.join(path, "report.json")):
                continue
            qs = load(path)
            t = thresholds.get(reader)
            for rule in RULES:
                n, f1, em, p50, out = score(qs, texts, rule, t)
                print(f"| {reader} | {split} | {rule} | {n} | {f1:.1f} | {em:.1f} | {p50:.1f} | "
                      f"{out['correct']:.0f} / {out['abstained']:.0f} / {out['wrong']:.0f} |")

main()
