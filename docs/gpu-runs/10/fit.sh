#!/usr/bin/env bash
# Call 10: the test set whose documents fit Qwen's 32k window (155 questions in 36 documents
# of ~5.7k tokens, questions 5000+ of the file), every method at 512/1024/2048.
set -u; cd /tmp
export S3MEM_LOG=warn
M="--models-dir /tmp/m --model /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf --sae /tmp/sae-qwen --device cuda:0"
t0=$(date +%s)
timeout 570 bash /tmp/run-on-gpu.sh /tmp/s3mem eval $M --data-dir /tmp/qf --out /tmp/rep-fit --instruction "$(cat /tmp/instruction.txt)" /tmp/hpq-fit.jsonl > /tmp/out-fit.txt 2>$OUT/fit.err
echo "=== fit rc=$? $(( $(date +%s)-t0 )) s"; grep '^|' /tmp/out-fit.txt
tar czf $OUT/fit.tgz out-fit.txt rep-fit
