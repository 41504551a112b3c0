#!/usr/bin/env bash
# Call 1: stage the binary and part 1 of the SmolLM2 GGUF in /tmp (call 2 must follow at once).
set -u; cd "$(dirname "$0")"
mkdir -p /tmp/m && cp smol.00 /tmp/m/ && xz -dc s3mem.xz > /tmp/s3mem && chmod +x /tmp/s3mem && cp run-on-gpu.sh /tmp/
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
ls -la /tmp/m /tmp/s3mem
