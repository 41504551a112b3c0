#!/usr/bin/env bash
# Issue 20 item 3 on this machine's CPU (2 cores; the GPU script docs/gpu-runs/13/support.sh
# found no device): which abstention signal separates answerable questions from questions
# whose evidence was removed, with the Qwen2.5-Coder-0.5B reader on the SmolLM2 index at
# bm25@1024 (free answers, at most 32 tokens, never abstaining: each question records both
# signals, the quote's first-token probability and the support log-odds).
# Development: the first N hp-dev2 questions and the first N of hp-dev2-removed (the same
# haystacks without any gold evidence); `eval calibrate --signal` picks each signal's
# threshold there (at most 10% of answerable questions wrongly abstained). Held-out: the same
# on hp-test, the development thresholds applied with `--threshold`, not chosen again.
# Usage: bash abstain-cpu.sh [N] [OUT]   (N=60: about an hour on 2 cores)
set -u
N=${1:-60}; OUT=${2:-/tmp/abstain-cpu}; mkdir -p $OUT
S3=${S3MEM:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/s3mem}
D=${DATA:-/work/data}
E="--embedder none --answer-model qwen2.5-coder-0.5b --methods bm25 --budgets 1024 --answer-mode free --abstain-below never --max-new-tokens 32 --limit $N"
log() { echo "$*" | tee -a $OUT/run.log; }
run() { local name=$1; shift; log "=== $name: $*"; local t0=$(date +%s)
  nice -n 5 $S3 "$@" > $OUT/$name.out 2>> $OUT/run.log; log "rc=$? $name $(( $(date +%s)-t0 )) s"; }
for set in hp-dev2 hp-dev2-removed; do
  rm -rf $OUT/d-$set; run $set eval $D/$set.jsonl --data-dir $OUT/d-$set $E --out $OUT/$set
done
declare -A T
for sig in quote support; do
  run cal-dev-$sig eval calibrate --answerable $OUT/hp-dev2/report.json --removed $OUT/hp-dev2-removed/report.json --method bm25 --signal $sig
  cat $OUT/cal-dev-$sig.out | tee -a $OUT/run.log
  T[$sig]=$(sed -n 's/^chosen: abstain below \([^ ]*\) .*/\1/p' $OUT/cal-dev-$sig.out)
done
for set in hp-test hp-test-removed; do
  rm -rf $OUT/d-$set; run $set eval $D/$set.jsonl --data-dir $OUT/d-$set $E --out $OUT/$set
done
for sig in quote support; do
  [ -n "${T[$sig]}" ] || { log "held-out $sig: no development threshold to apply"; continue; }
  run held-$sig eval calibrate --answerable $OUT/hp-test/report.json --removed $OUT/hp-test-removed/report.json --method bm25 --signal $sig --threshold=${T[$sig]}
  cat $OUT/held-$sig.out | tee -a $OUT/run.log
done
# How well each signal separates whatever the threshold: AUROC of answerable questions whose
# gold evidence was retrieved against removed ones.
python3 - $OUT <<'PY' | tee -a $OUT/run.log
import json, sys
o = sys.argv[1]
def runs(p):
    try: return json.load(open(p))["runs"]
    except Exception as e: print(p, "unreadable:", e); return []
def auroc(pos, neg):
    if not pos or not neg: return float("nan")
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
for s in ("hp-dev2", "hp-test"):
    a, r = runs(f"{o}/{s}/report.json"), runs(f"{o}/{s}-removed/report.json")
    there = [x for x in a if x.get("recalled")]
    for sig, key in (("quote", "confidence"), ("support", "support")):
        pos = [x[key] for x in there if x.get(key) is not None]
        neg = [x[key] for x in r if x.get(key) is not None]
        print(f"{s} {sig}: AUROC {auroc(pos, neg):.3f} (answerable with evidence n={len(pos)}, removed n={len(neg)})")
    ms = sorted(x["support_ms"] for x in a + r if x.get("support_ms") is not None)
    pre = sorted(x["prefill_ms"] for x in a + r if x.get("prefill_ms") is not None)
    if ms and pre:
        print(f"{s}: support turn p50 {ms[len(ms)//2]:.0f} ms, prefill p50 {pre[len(pre)//2]:.0f} ms")
PY
