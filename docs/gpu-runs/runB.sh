#!/usr/bin/env bash
# Call B: join the SmolLM2 GGUF, then parity with the default SAE set, a real scan and ingest on
# the GPU, and the default SAE set's training (1 epoch) on the GPU and on the CPU.
set -u; cd "$(dirname "$0")"
[ -x /tmp/s3mem ] && [ -f /tmp/m/smol.00 ] || { echo "part 1 is gone (fresh machine)"; exit 3; }
cat /tmp/m/smol.00 smol.01 > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf | tee $OUT/b.log
xz -dc pg.json.xz > /tmp/pg.json
python3 -c "import json; d=json.load(open('/tmp/pg.json')); open('/tmp/pg.txt','w').write(d['text'] if isinstance(d,dict) else '\n'.join(r['text'] for r in d))"
head -c 200000 /tmp/pg.txt > /tmp/pg200k.txt; wc -c /tmp/pg.txt | tee -a $OUT/b.log
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"; export S3MEM_LOG=warn
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/b.log; local t0=$(date +%s)
  timeout $lim $R "$@" > $OUT/$name.out 2>> $OUT/b.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/b.log; tail -c 1500 $OUT/$name.out; }
s parity 150 bench parity $M --device cuda:0 --tokens 8192 /tmp/pg.txt
s scan 120 scan $M --device cuda:0 --sae default --json /tmp/pg.txt
s ingest 100 ingest $M --device cuda:0 --data-dir /tmp/d --collection pg --json /tmp/pg200k.txt
s sae-gpu 170 sae train $M --device cuda:0 --corpus /tmp/pg.json --tokens 250000 --epochs 1 --with-queries --samples-cache /tmp/pg250k.safetensors --out /tmp/sae-gpu --json
s sae-cpu 170 sae train $M --device cpu --corpus /tmp/pg.json --tokens 250000 --epochs 1 --with-queries --samples-cache /tmp/pg250k.safetensors --out /tmp/sae-cpu --json
