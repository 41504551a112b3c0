#!/usr/bin/env bash
# Issue 20 on the H200: readers side by side at the same evidence (SmolLM2-135M index, its
# default SAE set). Per reader: development questions (hp-dev2, first 100, and the same
# haystacks with the gold evidence removed, first 100) at bm25@1024 in free and quote mode,
# never abstaining, then `eval calibrate` (the threshold is chosen there); held-out: the 155
# hpq-fit questions with bm25, rag and hybrid @1024 (free and quote), and the first 100
# held-out questions without their evidence (hp-test-removed) at bm25@1024.
# usage: r3-readers.sh READER... (smol | qwen05 | qwen15)
set -u; cd /tmp
Q05=/tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
if [ ! -f $Q05 ] && ls /tmp/st/qw.9 >/dev/null 2>&1; then cat /tmp/st/qw.? > $Q05; sha256sum $Q05 | tee -a $OUT/r3.log; fi
for f in hp-dev2 hp-dev2-removed hp-test-removed; do [ -f /tmp/$f.jsonl ] || xz -dc /tmp/st/$f.jsonl.xz > /tmp/$f.jsonl; done
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda:0"
E="--budgets 1024 --answer-mode free,quote --abstain-below never --max-new-tokens 32"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/r3-$r.log; local t0=$(date +%s)
  timeout $lim $R "$@" > /tmp/$name.out 2>> $OUT/r3-$r.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/r3-$r.log; grep '^|' /tmp/$name.out | head -n 12; }
for r in "$@"; do
  case $r in
    smol) A=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf ;;
    qwen05) A=/tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf ;;
    qwen15) A=/tmp/m/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf ;;
  esac
  s dev-$r 120 eval /tmp/hp-dev2.jsonl --limit 100 $M --data-dir /tmp/d2-$r --answer-model $A --methods bm25 $E --out /tmp/rep/dev-$r
  s devrm-$r 80 eval /tmp/hp-dev2-removed.jsonl --limit 100 $M --data-dir /tmp/d2r-$r --answer-model $A --methods bm25 $E --out /tmp/rep/devrm-$r
  s cal-$r 30 eval calibrate --answerable /tmp/rep/dev-$r/report.json --removed /tmp/rep/devrm-$r/report.json --method bm25/quote
  cat /tmp/cal-$r.out >> $OUT/r3-$r.log
  s fit-$r 180 eval /tmp/hpq-fit.jsonl $M --data-dir /tmp/fit-$r --answer-model $A --methods bm25,rag,hybrid $E --out /tmp/rep/fit-$r
  s testrm-$r 80 eval /tmp/hp-test-removed.jsonl --limit 100 $M --data-dir /tmp/tr-$r --answer-model $A --methods bm25 $E --out /tmp/rep/testrm-$r
done
cd /tmp && tar czf $OUT/r3-$(echo "$@" | tr " " "-").tgz rep/*/report.json rep/*/report.md 2>/dev/null
