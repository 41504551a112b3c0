#!/usr/bin/env bash
# Run 14: (issue 15) the question latency of attention re-ranking at 1M tokens again, after the
# S3 stage was moved beside BM25 and dense and the evidence pass cut into 512-token pieces
# (same settings as run 13's lat-*.out); (issue 18) the fused top-k kernel: ../13/topk.sh
# (bench sae-encode of the three paths, ingest of the 727k-token essays as one and as 200
# documents, a 16k prefix). Staged: the payload parts in /tmp/st (../13/setup.sh joins them).
set -u; cd "$(dirname "$0")"; OUT=${OUT:-/tmp/out14}; mkdir -p $OUT
bash ../13/setup.sh 2>&1 | tee $OUT/r14.log
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda:0"
H="--heads 18.7,7.7,14.3,17.3,23.2,17.4,15.6,18.6 --rerank-first-stage 1"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/r14.log; local t0=$(date +%s)
  (cd /tmp && timeout $lim $R "$@") > $OUT/$name.out 2>> $OUT/r14.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/r14.log; grep -E '^\||^stages' $OUT/$name.out | tail -n 3 | tee -a $OUT/r14.log; }
B="bench retrieve $M --data-dir /tmp/br --tokens 1000000 --runs 20"
s lat-rerank 120 $B --method rerank $H --pool-tokens 2048
s lat-rerank-bf16 90 $B --method rerank $H --pool-tokens 2048 --weights bf16
s lat-rag 60 $B --method rag
s lat-hybrid 60 $B --method hybrid
OUT=$OUT/topk bash ../13/topk.sh 2>&1 | grep -v "^\s*lib\|LD_LIBRARY\|ldd:" | tail -n 30
