#!/usr/bin/env bash
# Run 13a's daemon part again (the first try asked before the models had loaded): `serve
# --device cuda:0` with SmolLM2 and the Qwen 0.5B reader, 200 essays streamed in through
# `ingest --server`, questions through `retrieve`/`ask --server`, then SIGTERM.
set -u; cd "$(dirname "$0")"; OUT=${OUT:-/tmp/out13}; mkdir -p $OUT
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
SMOL=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf; QWEN=/tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
M="--models-dir /tmp/m --model $SMOL --device cuda:0"
# The daemon on the GPU: serve, stream 200 essays in, ask through client mode, stop it.
python3 -c "
import json,os,shutil
t=json.load(open('/tmp/pg.json'))['text']; open('/tmp/pg.txt','w').write(t)
shutil.rmtree('/tmp/pgdocs',ignore_errors=True); os.makedirs('/tmp/pgdocs')
n=200; step=len(t)//n
for i in range(n): open('/tmp/pgdocs/essay-%03d.txt'%i,'w').write(t[i*step:(i+1)*step])
"
rm -rf /tmp/sd; echo "=== serve --device cuda:0" | tee -a $OUT/serve.log
(cd /tmp && timeout 400 $R serve $M --answer-model $QWEN --data-dir /tmp/sd --listen 127.0.0.1:50151 > $OUT/serve.out 2> $OUT/serve.err) &
for i in $(seq 1 60); do grep -q "listening on" $OUT/serve.out $OUT/serve.err 2>/dev/null && break; sleep 1; done
C="--server http://127.0.0.1:50151"
# "listening" comes before the models are loaded (health NOT_SERVING until then): wait for it.
for i in $(seq 1 60); do (cd /tmp && $R retrieve $C --collection none "loading?" 2>&1) | grep -q "still loading" || break; sleep 1; done
echo "serving after $i s" | tee -a $OUT/serve.log
t0=$(date +%s.%N)
(cd /tmp && timeout 200 $R ingest $C --collection pg --json /tmp/pgdocs) > $OUT/serve-ingest.out 2>> $OUT/serve.log
echo "ingest over gRPC rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s" | tee -a $OUT/serve.log
tail -c 400 $OUT/serve-ingest.out; echo
(cd /tmp && timeout 30 $R stats $C) 2>&1 | tee -a $OUT/serve.log | tail -n 8
for q in "What did the palliative care nurse list?" "Why do startups need to grow fast?" "What is the best way to get startup ideas?"; do
  t0=$(date +%s.%N)
  (cd /tmp && timeout 60 $R retrieve $C --collection pg --budget 1024 --json "$q") > /tmp/r.json 2>> $OUT/serve.log
  echo "retrieve rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,2))") s: $q" | tee -a $OUT/serve.log
  python3 -c "import json; e=json.load(open('/tmp/r.json')); print(e['method'], e['context_tokens'], 'tokens,', len(e['spans']), 'spans')" | tee -a $OUT/serve.log
  t0=$(date +%s.%N)
  (cd /tmp && timeout 90 $R ask $C --collection pg --budget 1024 "$q") 2>> $OUT/serve.log | tee -a $OUT/serve.log | tail -n 4
  echo "ask rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,2))") s" | tee -a $OUT/serve.log
done
pkill -TERM -f "s3mem serve" ; sleep 3; echo "serve stopped: $(tail -n 3 $OUT/serve.err)" | tee -a $OUT/serve.log
