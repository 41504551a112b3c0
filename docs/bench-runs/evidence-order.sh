#!/usr/bin/env bash
# Evidence order (issue 20, docs/eval.md "Evidence order"): the same pieces by document and
# position against best fused rank first, with the Qwen2.5-Coder-0.5B reader at hybrid@1024 on
# the SmolLM2 index, on this machine's CPU. Development: a needle set with other codes
# (seed 7) and the first 30 hp-dev2 questions; held-out: the 15-question needle set.
# Usage: bash evidence-order.sh ESSAYS_JSON DATA_DIR_OF_JSONL OUT   (about 1.5 hours on 2 cores)
set -u
E=$1; DATA=$2; OUT=$3; mkdir -p $OUT
S=${S3MEM:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/s3mem}
A="--answer-model qwen2.5-coder-0.5b --methods hybrid --budgets 1024 --abstain-below never --max-new-tokens 32"
$S eval build needle --essays $E --out $OUT/needle-dev.jsonl --lengths 8192,32768 --depths 0,25,50,75,100 --shared --seed 7
$S eval build needle --essays $E --out $OUT/needle-eval.jsonl --lengths 8192,32768,131072 --depths 0,25,50,75,100 --shared
for order in position rank; do
  nice -n 5 $S eval $OUT/needle-dev.jsonl --data-dir $OUT/d-needle-dev $A --evidence-order $order --out $OUT/needle-dev-$order
  nice -n 5 $S eval $DATA/hp-dev2.jsonl --limit 30 --embedder none --data-dir $OUT/d-hp-dev2 $A --evidence-order $order --out $OUT/hp-dev2-30-$order
  nice -n 5 $S eval $OUT/needle-eval.jsonl --data-dir $OUT/d-needles $A --answer-mode free,quote --evidence-order $order --out $OUT/needles-$order
done
grep -h '^| hybrid' $OUT/*/report.md
