#!/usr/bin/env bash
# Call A: stage part 1 of the SmolLM2 GGUF and the binary in /tmp (kept while the machine is warm);
# quick random-weight SmolLM2-shape throughput in f32 and f16.
set -u; cd "$(dirname "$0")"
mkdir -p /tmp/m && cp smol.00 /tmp/m/ && xz -dc s3mem.xz > /tmp/s3mem && chmod +x /tmp/s3mem && cp run-on-gpu.sh /tmp/
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"; export S3MEM_LOG=warn
for w in f32 f16; do
  timeout 100 $R bench scan --random-shape smollm2-135m --device cuda:0 --weights $w --tokens 262144 --layers 8,16,24 --batches 8,32 > $OUT/smollm2-$w.md 2>> $OUT/a.log; cat $OUT/smollm2-$w.md
done
ls -la /tmp/m
