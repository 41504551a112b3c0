#!/usr/bin/env bash
# Evidence recall on a larger held-out HotpotQA set (312 questions in 20 documents of ~22k
# tokens, questions 1000+ of the file, none in the dev or eval sets), SmolLM2 + default SAEs,
# scan on the GPU: random, bm25, s3, hybrid (re-rank 0.1, default), and hybrid with re-rank
# 0 and 0.25.
set -u; cd "$(dirname "$0")"
[ -x /tmp/s3mem ] && [ -f /tmp/m/smol.00 ] || { echo "part 1 is gone (fresh machine)"; exit 3; }
cat /tmp/m/smol.00 smol.01 > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf | tee $OUT/f.log
xz -dc hp-big.jsonl.xz > /tmp/hp-big.jsonl
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda:0"
r() { local name=$1; shift; local t0=$(date +%s)
  timeout 240 $R eval recall $M --data-dir /tmp/rb --dataset /tmp/hp-big.jsonl --budgets 512,1024,2048 --json "$@" > /tmp/recall-$name.txt 2>>$OUT/f.log
  echo "=== $name rc=$? $(( $(date +%s)-t0 )) s: $*" | tee -a $OUT/f.log; grep '^{' /tmp/recall-$name.txt | tee $OUT/recall-$name.json; }
r main --methods random,bm25,s3,hybrid
r rerank0 --methods hybrid --rerank 0
r rerank025 --methods hybrid --rerank 0.25
