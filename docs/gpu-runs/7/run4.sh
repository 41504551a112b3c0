#!/usr/bin/env bash
# Needle, one fact per 64k-token haystack (11 depths), SmolLM2 on the GPU: hybrid and bm25 at
# budgets 64 and 512, full context and closed-book for contrast.
set -u; cd "$(dirname "$0")"
[ -x /tmp/s3mem ] && [ -f /tmp/m/smol.00 ] || { echo "part 1 is gone (fresh machine)"; exit 3; }
cat /tmp/m/smol.00 smol.01 > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf | tee $OUT/d.log
xz -dc needle64k-each.jsonl.xz > /tmp/n64.jsonl
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf"
S3MEM_LOG=warn timeout 400 bash /tmp/run-on-gpu.sh /tmp/s3mem eval $M --device cuda:0 --data-dir /tmp/d64 --methods full,bm25,hybrid,closed-book --budgets 64,512 --out /tmp/rep-n64 /tmp/n64.jsonl > /tmp/out-n64.txt 2>> $OUT/d.log
echo "rc=$?" | tee -a $OUT/d.log; tail -c 2500 /tmp/out-n64.txt
cd /tmp && tar czf $OUT/d.tgz out-n64.txt rep-n64
