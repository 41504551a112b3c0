#!/usr/bin/env bash
# Run 10, last call of a second lease: join the Qwen GGUF from the parts staged by calls 1-8,
# then the needle set (15 questions, 10k/44k/142k-token essay haystacks) with the
# instruction chosen on the HotpotQA dev set, every method.
set -u; cd "$(dirname "$0")"
[ -x /tmp/s3mem ] && [ "$(ls /tmp/q | wc -l)" = 8 ] || { echo "staged parts missing: $(ls /tmp/q 2>&1)"; exit 3; }
cp part.8 /tmp/q/ && mkdir -p /tmp/m && cat /tmp/q/part.0 /tmp/q/part.1 /tmp/q/part.2 /tmp/q/part.3 /tmp/q/part.4 /tmp/q/part.5 /tmp/q/part.6 /tmp/q/part.7 /tmp/q/part.8 > /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf && rm -rf /tmp/q
sha256sum /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
xz -dc needle-eval.jsonl.xz > /tmp/needle.jsonl && cp -r sae-qwen /tmp/
export S3MEM_LOG=warn
M="--models-dir /tmp/m --model /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf --sae /tmp/sae-qwen --device cuda:0"
t0=$(date +%s)
cd /tmp && timeout 300 bash /tmp/run-on-gpu.sh /tmp/s3mem eval $M --data-dir /tmp/qn --out /tmp/rep-needle --instruction "Only give me the answer and do not output any other words." /tmp/needle.jsonl > /tmp/out-needle.txt 2>$OUT/needle.err
echo "=== needle rc=$? $(( $(date +%s)-t0 )) s"; grep '^|' /tmp/out-needle.txt
tar czf $OUT/needle.tgz out-needle.txt rep-needle
