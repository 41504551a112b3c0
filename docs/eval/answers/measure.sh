#!/bin/bash
# Reader measurement (issue 20). One thread (RAYON_NUM_THREADS=1): on this shared 2-core machine
# a thread pool per process oversubscribes the cores and decoding slows 20-50x.
set -x
export RAYON_NUM_THREADS=1
B=/work/ans/s3mem
cd /work/ans
E="--methods bm25 --budgets 1024 --answer-mode free,quote --abstain-below never"
for R in smollm2-135m qwen2.5-coder-0.5b; do
  nice -n 10 $B eval /work/data/hp-dev.jsonl --limit 20 --data-dir /work/ans/dd-dev --answer-model $R $E --out dev-$R > dev-$R.log 2>&1
  nice -n 10 $B eval hp-dev-removed.jsonl --limit 9 --data-dir /work/ans/dd-dev --answer-model $R $E --out devrm-$R > devrm-$R.log 2>&1
done
for R in smollm2-135m qwen2.5-coder-0.5b; do
  nice -n 10 $B eval /work/data/hp-test.jsonl --limit 20 --data-dir /work/ans/dd-test --answer-model $R $E --out test-$R > test-$R.log 2>&1
done
echo ALLDONE
