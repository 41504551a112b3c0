#!/usr/bin/env bash
# Call A (second round): stage part 1 of the SmolLM2 GGUF and the binary in /tmp.
set -u; cd "$(dirname "$0")"
mkdir -p /tmp/m && cp smol.00 /tmp/m/ && xz -dc s3mem.xz > /tmp/s3mem && chmod +x /tmp/s3mem && cp run-on-gpu.sh /tmp/ && ls -la /tmp/m /tmp/s3mem
