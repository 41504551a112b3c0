#!/usr/bin/env bash
# Run 13c: (issue 15, item 3) SAEs of the retrieval heads' own KV groups. SmolLM2's retrieval
# heads (chosen on hp-dev: 18.7, 7.7, 14.3, 17.3, 23.2, 17.4, 15.6, 18.6) sit in layers
# 7,14,15,17,18,23; one SAE per layer and KV head there (`sae train --per-head`, 18 SAEs,
# trained on the device from dev contexts), against the embedded default set (layers 8,16,24,
# one shared SAE per layer). S3 alone on 100 dev questions (hp-dev2), both sets side by side;
# then the 307 held-out questions (hp-test) with both, whatever dev says (no choice is made
# from the held-out numbers).
set -u; cd "$(dirname "$0")"; OUT=${OUT:-/tmp/out13}; mkdir -p $OUT
bash setup.sh > /dev/null 2>&1
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda:0 --embedder none"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/c.log; local t0=$(date +%s)
  (cd /tmp && timeout $lim $R "$@") > $OUT/$name.out 2>> $OUT/c.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/c.log; grep -E '^\||^@' $OUT/$name.out | tail -n 8; }
s sae-heads 150 sae train $M --corpus /tmp/hp-dev2-contexts.jsonl --layers 7,14,15,17,18,23 --per-head --tokens 400000 --epochs 1 --out /tmp/sae-heads --json
E="--methods s3 --budgets 512,1024,2048"
s dev-default 110 eval recall $M --data-dir /tmp/ev-def --dataset /tmp/hp-dev2.jsonl --limit 100 $E --per-question $OUT/dev-default.jsonl
s dev-heads 110 eval recall $M --sae /tmp/sae-heads --data-dir /tmp/ev-heads --dataset /tmp/hp-dev2.jsonl --limit 100 $E --per-question $OUT/dev-heads.jsonl
s test-default 110 eval recall $M --data-dir /tmp/et-def --dataset /tmp/hp-test.jsonl $E --per-question $OUT/test-default.jsonl
s test-heads 110 eval recall $M --sae /tmp/sae-heads --data-dir /tmp/et-heads --dataset /tmp/hp-test.jsonl $E --per-question $OUT/test-heads.jsonl
