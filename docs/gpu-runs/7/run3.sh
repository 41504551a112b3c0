#!/usr/bin/env bash
# Call 3: HotpotQA long-haystack eval of SmolLM2 on the GPU (model staged by calls 1-2).
set -u; cd "$(dirname "$0")"
[ -x /tmp/s3mem ] && [ -f /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf ] || { echo "model is gone (fresh machine)"; exit 3; }
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"; export S3MEM_LOG=warn
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "=== eval-hp" | tee $OUT/c.log; t0=$(date +%s)
timeout 500 $R eval $M --device cuda:0 --data-dir /tmp/dh --out /tmp/rep-hp /tmp/hp.jsonl > /tmp/out-eval-hp.txt 2>> $OUT/c.log
echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/c.log; tail -c 3000 /tmp/out-eval-hp.txt
cd /tmp && tar czf $OUT/c.tgz out-eval-hp.txt rep-hp
