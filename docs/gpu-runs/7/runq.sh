#!/usr/bin/env bash
# Qwen2.5-Coder-0.5B on the GPU: join the GGUF (9 parts staged in /tmp/q by earlier calls),
# train an SAE set (layers 6,12,18, keys+queries, 250k tokens of essays, 1 epoch), then the
# needle and HotpotQA evals.
set -u; cd "$(dirname "$0")"
cp part.8 /tmp/q/ && cat /tmp/q/part.0 /tmp/q/part.1 /tmp/q/part.2 /tmp/q/part.3 /tmp/q/part.4 /tmp/q/part.5 /tmp/q/part.6 /tmp/q/part.7 /tmp/q/part.8 > /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf && rm -rf /tmp/q
sha256sum /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf | tee $OUT/q.log
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"; export S3MEM_LOG=warn
M="--models-dir /tmp/m --model /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/q.log; local t0=$(date +%s)
  timeout $lim $R "$@" > /tmp/out-$name.txt 2>> $OUT/q.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/q.log; tail -c 2500 /tmp/out-$name.txt; }
s sae-qwen 200 sae train $M --device cuda:0 --corpus /tmp/pg.json --layers 6,12,18 --tokens 250000 --epochs 1 --with-queries --out /tmp/sae-qwen --json
s eval-needle-qwen 130 eval $M --sae /tmp/sae-qwen --device cuda:0 --data-dir /tmp/qn --out /tmp/rep-qn /tmp/needle.jsonl
s eval-hp-qwen 230 eval $M --sae /tmp/sae-qwen --device cuda:0 --data-dir /tmp/qh --out /tmp/rep-qh /tmp/hp.jsonl
cd /tmp && tar czf $OUT/q.tgz out-*qwen*.txt sae-qwen rep-qn rep-qh
