#!/usr/bin/env bash
# Run 13, first step of each script: joins the staged payload (/tmp/st/pay.tar.NN, carried
# under the 64 MiB limit per call by the calls before) and unpacks it once: the xz'd CUDA
# build, run-on-gpu.sh, the models (SmolLM2, Qwen2.5-Coder-0.5B, all-MiniLM-L6-v2) and the
# datasets. Checks every model against the sha256 `model fetch` pins.
set -u
if [ ! -x /tmp/s3mem ]; then
  cat /tmp/st/pay.tar.* | tar -x -C /tmp || { echo "payload incomplete: $(ls /tmp/st)"; exit 3; }
  xz -dc /tmp/s3mem.xz > /tmp/s3mem && chmod +x /tmp/s3mem
  for f in /tmp/*.jsonl.xz /tmp/pg.json.xz; do xz -dc "$f" > "${f%.xz}"; done
fi
sha256sum /tmp/m/*.gguf /tmp/m/minilm/model.safetensors
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv
