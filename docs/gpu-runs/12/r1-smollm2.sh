#!/usr/bin/env bash
# Issue 15 on the H200, SmolLM2-135M index (default SAE set, minilm embeddings):
# attention re-ranking on all 307 held-out HotpotQA questions (hp-test, the heads and weight
# chosen on hp-dev in session 8), bm25 and rag in the same run for the paired bootstrap; then
# question latency (forward pass, S3, dense, re-ranking and assembly) over 1M tokens.
# Staged by the calls before it: /tmp/st holds the binary, the model parts and the data.
set -u; cd /tmp
if [ ! -x /tmp/s3mem ]; then
  xz -dc /tmp/st/s3mem.xz > /tmp/s3mem && chmod +x /tmp/s3mem; cp /tmp/st/run-on-gpu.sh /tmp/
  mkdir -p /tmp/m/minilm && cat /tmp/st/smol.a /tmp/st/smol.b /tmp/st/smol.c > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
  cat /tmp/st/mini.a /tmp/st/mini.b > /tmp/m/minilm/model.safetensors && cp /tmp/st/tokenizer.json /tmp/st/config.json /tmp/m/minilm/
  for f in hp-test hp-dev hpq-fit; do xz -dc /tmp/st/$f.jsonl.xz > /tmp/$f.jsonl; done
fi
sha256sum /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/m/minilm/model.safetensors | tee $OUT/r1.log
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv | tee -a $OUT/r1.log
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda:0"
H="--heads 18.7,7.7,14.3,17.3,23.2,17.4,15.6,18.6 --rerank-first-stage 1 --pool-tokens 2048"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/r1.log; local t0=$(date +%s)
  timeout $lim $R "$@" > $OUT/$name.out 2>> $OUT/r1.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/r1.log; tail -n 12 $OUT/$name.out; }
# The 307 questions in four parts run side by side (one data dir each), so no part nears
# its timeout; combine.py pools the per-question files.
split -n l/4 -d -a 1 /tmp/hp-test.jsonl /tmp/hp-test-part.
for p in 0 1 2 3; do
  ( timeout 300 $R eval recall $M --data-dir /tmp/dt$p --collection eval --dataset /tmp/hp-test-part.$p --methods bm25,rag,rerank $H --budgets 512,1024,2048 --per-question $OUT/test-rerank-$p.jsonl > /tmp/test-rerank-$p.out 2>> /tmp/test-rerank-$p.err; echo "part $p rc=$?" >> $OUT/r1.log ) &
done
t0=$(date +%s); wait; echo "=== parts done in $(( $(date +%s)-t0 )) s" | tee -a $OUT/r1.log
tail -n 4 /tmp/test-rerank-*.err | tee -a $OUT/r1.log
python3 /tmp/st/combine.py $OUT/test-rerank-?.jsonl | tee -a $OUT/r1.log
s latency 150 bench retrieve $M --data-dir /tmp/br --corpus /tmp/st/corpus-0.txt,/tmp/st/corpus-1.txt,/tmp/st/corpus-2.txt --tokens 100000,1000000 --runs 20 --method rerank $H
s latency-rag 50 bench retrieve $M --data-dir /tmp/br --corpus /tmp/st/corpus-0.txt,/tmp/st/corpus-1.txt,/tmp/st/corpus-2.txt --tokens 1000000 --runs 20 --method rag
