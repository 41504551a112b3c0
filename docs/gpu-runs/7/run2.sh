#!/usr/bin/env bash
# Call 2: join the SmolLM2 GGUF (part 1 staged by call 1); parity with the default weights,
# batched ingest of many documents, needle eval on the GPU; CPU scan memory 8k..512k on the
# host's cores in the background.
set -u; cd "$(dirname "$0")"
[ -x /tmp/s3mem ] && [ -f /tmp/m/smol.00 ] || { echo "part 1 is gone (fresh machine)"; exit 3; }
cat /tmp/m/smol.00 smol.01 > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf | tee $OUT/b.log
xz -dc pg.json.xz > /tmp/pg.json; xz -dc hp-eval.jsonl.xz > /tmp/hp.jsonl; xz -dc needle-eval.jsonl.xz > /tmp/needle.jsonl
python3 -c "
import json,os
t=json.load(open('/tmp/pg.json'))['text']; open('/tmp/pg.txt','w').write(t)
os.makedirs('/tmp/pgdocs',exist_ok=True)
n=200; step=len(t)//n
for i in range(n): open('/tmp/pgdocs/essay-%03d.txt'%i,'w').write(t[i*step:(i+1)*step])
"
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"; export S3MEM_LOG=warn
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/b.log; local t0=$(date +%s)
  timeout $lim $R "$@" > /tmp/out-$name.txt 2>> $OUT/b.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/b.log; tail -c 1500 /tmp/out-$name.txt; }
( echo "=== cpu-scan-memory (background, 10 threads)"; t0=$(date +%s)
  S3MEM_THREADS=10 timeout 480 /tmp/s3mem bench scan $M --device cpu --corpus /tmp/pg.txt --tokens 8192,65536,524288 --layers 8 --json
  echo "rc=$? $(( $(date +%s)-t0 )) s" ) > /tmp/out-cpu-scan-memory.txt 2>&1 &
s parity 90 bench parity $M --device cuda:0 --tokens 8192 /tmp/pg.txt
s ingest-one 90 ingest $M --device cuda:0 --data-dir /tmp/d1 --collection pg --json /tmp/pg.txt
s ingest-many 120 ingest $M --device cuda:0 --data-dir /tmp/dm --collection pg --json /tmp/pgdocs
s eval-needle 200 eval $M --device cuda:0 --data-dir /tmp/dn --out /tmp/rep-needle /tmp/needle.jsonl
wait
cat /tmp/out-cpu-scan-memory.txt
cd /tmp && tar czf $OUT/b.tgz out-*.txt rep-needle
