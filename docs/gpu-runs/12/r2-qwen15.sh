#!/usr/bin/env bash
# Issue 15 on the H200: Qwen2.5-Coder-1.5B as the re-ranking model over the SmolLM2 index of
# r1 (the pool is re-tokenized for the reader). Heads and first-stage weight chosen on hp-dev
# by pick.py (every head of the 28 layers x 12 heads scored), then all 307 held-out questions
# with bm25 and rag in the same run, then latency over 1M tokens.
set -u; cd /tmp
Q15=/tmp/m/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
if [ ! -f $Q15 ]; then cat $(ls /tmp/st/part*.bin | sort) > $Q15; fi
sha256sum $Q15 | tee $OUT/r2.log
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda:0"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/r2.log; local t0=$(date +%s)
  timeout $lim $R "$@" > $OUT/$name.out 2>> $OUT/r2.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/r2.log; tail -n 12 $OUT/$name.out; }
s heads15 150 eval heads $M --data-dir /tmp/dd --collection eval --dataset /tmp/hp-dev.jsonl --rerank-model $Q15 --pool-tokens 2048 --out $OUT/heads15.json
read HEADS W < <(python3 /tmp/st/pick.py $OUT/heads15.json); echo "picked $HEADS first-stage $W" | tee -a $OUT/r2.log
H="--rerank-model $Q15 --heads $HEADS --rerank-first-stage $W --pool-tokens 2048"
for p in 0 1 2 3; do
  ( timeout 300 $R eval recall $M --data-dir /tmp/dt$p --collection eval --dataset /tmp/hp-test-part.$p --methods bm25,rag,rerank $H --budgets 512,1024,2048 --per-question $OUT/test-rerank15-$p.jsonl > /tmp/test-rerank15-$p.out 2>> /tmp/test-rerank15-$p.err; echo "part $p rc=$?" >> $OUT/r2.log ) &
done
t0=$(date +%s); wait; echo "=== parts done in $(( $(date +%s)-t0 )) s" | tee -a $OUT/r2.log
tail -n 4 /tmp/test-rerank15-*.err | tee -a $OUT/r2.log
python3 /tmp/st/combine.py $OUT/test-rerank15-?.jsonl | tee -a $OUT/r2.log
s latency15 100 bench retrieve $M --data-dir /tmp/br --corpus /tmp/st/corpus-0.txt,/tmp/st/corpus-1.txt,/tmp/st/corpus-2.txt --tokens 1000000 --runs 20 --method rerank $H
