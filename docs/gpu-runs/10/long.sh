#!/usr/bin/env bash
# Call 11: the test document beyond Qwen's 32k window (29 questions in one ~41k-token
# document, questions 7000+ of the file), every method at 512/1024/2048.
set -u; cd /tmp
export S3MEM_LOG=warn
M="--models-dir /tmp/m --model /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf --sae /tmp/sae-qwen --device cuda:0"
t0=$(date +%s)
timeout 570 bash /tmp/run-on-gpu.sh /tmp/s3mem eval $M --data-dir /tmp/ql --out /tmp/rep-long --instruction "$(cat /tmp/instruction.txt)" /tmp/hpq-long.jsonl > /tmp/out-long.txt 2>$OUT/long.err
echo "=== long rc=$? $(( $(date +%s)-t0 )) s"; grep '^|' /tmp/out-long.txt
tar czf $OUT/long.tgz out-long.txt rep-long
