#!/usr/bin/env bash
# Run 18, first step of each part: joins the staged payload once. /tmp/st/base.tar.NN (carried
# under the 64 MiB limit per call by the calls before): the xz'd CUDA build, run-on-gpu.sh,
# SmolLM2, all-MiniLM-L6-v2 and the datasets; /tmp/st/qwen.tar.NN (parts q and r only):
# Qwen2.5-Coder-0.5B. Checks every model against the sha256 `model fetch` pins.
set -u
if [ ! -x /tmp/s3mem ]; then
  cat /tmp/st/base.tar.* | tar -x -C /tmp || { echo "base payload incomplete: $(ls /tmp/st)"; exit 3; }
  xz -dc /tmp/s3mem.xz > /tmp/s3mem && chmod +x /tmp/s3mem
  for f in /tmp/*.jsonl.xz /tmp/pg.json.xz; do xz -dc "$f" > "${f%.xz}"; done
fi
if [ ! -f /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf ] && [ "$(ls /tmp/st/qwen.tar.* 2>/dev/null | wc -l)" = "${QWEN_PARTS:-11}" ]; then
  cat /tmp/st/qwen.tar.* | tar -x -C /tmp || echo "qwen payload incomplete: $(ls /tmp/st)"
fi
sha256sum /tmp/m/*.gguf /tmp/m/minilm/model.safetensors
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.total --format=csv
