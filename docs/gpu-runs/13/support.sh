#!/usr/bin/env bash
# Run 13 (issue 20 item 3, "not in the evidence"): which abstention signal separates answerable
# questions from questions whose evidence was removed, with the Qwen2.5-Coder-0.5B reader on the
# SmolLM2 index at bm25@1024 (free answers, at most 32 tokens, never abstaining: every run
# records both signals, the quote's first token and the support log-odds). Development: the
# first 100 hp-dev2 questions and the first 100 of the same haystacks without their gold
# evidence; `eval calibrate --signal quote|support` picks each signal's threshold (at most 10% of
# answerable questions wrongly abstained). Held-out: the same on hp-test, with the development
# thresholds applied (`eval calibrate --threshold`), not chosen again. The answerable and the
# removed run of each set go side by side (two processes on the one GPU). Every step under
# `timeout`; about 5 minutes on an H100.
#
# Staged as for r13a.sh (setup.sh): /tmp/s3mem (a CUDA build with `--abstain-signal`) and
# /tmp/run-on-gpu.sh, the models in /tmp/m, /tmp/hp-dev2.jsonl and /tmp/hp-test.jsonl.
set -u; cd "$(dirname "$0")"; OUT=${OUT:-/tmp/out13}; mkdir -p $OUT
[ -f setup.sh ] && bash setup.sh >> $OUT/support.log 2>&1
[ -x /tmp/s3mem ] && [ -f /tmp/run-on-gpu.sh ] || { echo "stage /tmp/s3mem and /tmp/run-on-gpu.sh first"; exit 3; }
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
(cd /tmp && timeout 30 $R eval calibrate --help 2>&1) | grep -q -- --signal || { echo "/tmp/s3mem has no eval calibrate --signal: build this branch"; exit 3; }
SMOL=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf; QWEN=/tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
M="--models-dir /tmp/m --model $SMOL --device cuda:0 --embedder none"
E="--answer-model $QWEN --methods bm25 --budgets 1024 --answer-mode free --abstain-below never --max-new-tokens 32 --limit 100"
log() { echo "$*" | tee -a $OUT/support.log; }
s() { local name=$1 lim=$2; shift 2; log "=== $name: $*"; local t0=$(date +%s)
  (cd /tmp && timeout $lim $R "$@") > $OUT/$name.out 2>> $OUT/support.log; log "rc=$? $name $(( $(date +%s)-t0 )) s"; }
# The questions without their evidence, built here from the staged sets.
for set in hp-dev2 hp-test; do
  s build-$set 60 eval build removed --input /tmp/$set.jsonl --out /tmp/$set-removed.jsonl
  log "$set-removed: $(wc -l < /tmp/$set-removed.jsonl) questions"
done
rm -rf /tmp/sup; mkdir -p /tmp/sup
# Both runs of a set at once; a run cut by its timeout keeps the report of the questions done.
pair() { local set=$1
  s $set 150 eval /tmp/$set.jsonl $M --data-dir /tmp/sup/d-$set $E --out /tmp/sup/$set &
  s $set-removed 150 eval /tmp/$set-removed.jsonl $M --data-dir /tmp/sup/d-$set-removed $E --out /tmp/sup/$set-removed &
  wait; }
pair hp-dev2
declare -A T
for sig in quote support; do
  s cal-dev-$sig 30 eval calibrate --answerable /tmp/sup/hp-dev2/report.json --removed /tmp/sup/hp-dev2-removed/report.json --method bm25 --signal $sig
  grep -E 'answerable, |^(chosen|no threshold)' $OUT/cal-dev-$sig.out | tee -a $OUT/support.log
  T[$sig]=$(sed -n 's/^chosen: abstain below \([^ ]*\) .*/\1/p' $OUT/cal-dev-$sig.out)
done
pair hp-test
for sig in quote support; do
  [ -n "${T[$sig]}" ] || { log "held-out $sig: no development threshold to apply"; continue; }
  s held-$sig 30 eval calibrate --answerable /tmp/sup/hp-test/report.json --removed /tmp/sup/hp-test-removed/report.json --method bm25 --signal $sig --threshold=${T[$sig]}
  grep -E -A 2 'answerable, |^\| threshold' $OUT/held-$sig.out | grep -v '^--' | tee -a $OUT/support.log
done
# How well each signal separates, whatever the threshold (AUROC: answerable questions whose gold
# evidence was retrieved against removed ones), and what the support turn costs beside prefill.
python3 - <<'PY' | tee -a $OUT/support.log
import json
def runs(p):
    try: return json.load(open(p))["runs"]
    except Exception as e: print(p, "unreadable:", e); return []
def auroc(pos, neg):
    if not pos or not neg: return float("nan")
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
for s in ("hp-dev2", "hp-test"):
    a, r = runs(f"/tmp/sup/{s}/report.json"), runs(f"/tmp/sup/{s}-removed/report.json")
    there = [x for x in a if x.get("recalled")]
    for sig, key in (("quote", "confidence"), ("support", "support")):
        pos = [x[key] for x in there if x.get(key) is not None]
        neg = [x[key] for x in r if x.get(key) is not None]
        print(f"{s} {sig}: AUROC {auroc(pos, neg):.3f} (answerable with evidence n={len(pos)}, removed n={len(neg)})")
    ms = sorted(x["support_ms"] for x in a + r if x.get("support_ms") is not None)
    pre = sorted(x["prefill_ms"] for x in a + r)
    if ms and pre:
        print(f"{s}: support turn p50 {ms[len(ms)//2]:.1f} ms, prefill p50 {pre[len(pre)//2]:.1f} ms (two runs side by side)")
PY
cd /tmp && tar czf $OUT/support-reports.tgz sup/*/report.json sup/*/report.md 2>/dev/null; ls -la $OUT/support-reports.tgz
