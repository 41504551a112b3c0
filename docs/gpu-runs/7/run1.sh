#!/usr/bin/env bash
# Call 1: stage the binary and part 1 of the SmolLM2 GGUF in /tmp; the Llama-3-8B-shape
# throughput and memory runs (random bf16 weights built on the GPU).
set -u; cd "$(dirname "$0")"
mkdir -p /tmp/m && cp smol.00 /tmp/m/ && xz -dc s3mem.xz > /tmp/s3mem && chmod +x /tmp/s3mem && cp run-on-gpu.sh /tmp/
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"; export S3MEM_LOG=warn
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/a.log; local t0=$(date +%s)
  timeout $lim $R "$@" > $OUT/$name.out 2>> $OUT/a.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/a.log; tail -c 1500 $OUT/$name.out; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a $OUT/a.log
s llama-throughput 200 bench scan --random-shape llama3-8b --device cuda:0 --tokens 65536 --layers 8,16,24 --batches 8,16,8 --prefill 2048,8192
s llama-memory 200 bench scan --random-shape llama3-8b --device cuda:0 --tokens 16384,262144,1048576 --layers 8,16,24 --batches 8
ls -la /tmp/m /tmp/s3mem | tee -a $OUT/a.log
