#!/usr/bin/env bash
# Run 13a: (issue 15) where an attention re-ranked question's time goes on the GPU, stage by
# stage (`bench retrieve` prints each stage's median), SmolLM2 heads, 1M tokens, the weights as
# the GPU default holds them (f32 for a quantized GGUF) and in bf16, pools of 2,048 and 1,024
# tokens, and head 7.7 alone (8 layers); (issue 18) the daemon on the GPU end to end: `serve
# --device cuda:0`, a streamed ingest of 200 essays and questions through `--server`;
# (issue 20) the needles with the default index model and the Qwen 0.5B reader at 1,024 tokens
# of hybrid evidence, free / quote / auto.
set -u; cd "$(dirname "$0")"; OUT=${OUT:-/tmp/out13}; mkdir -p $OUT
bash setup.sh 2>&1 | tee $OUT/a.log
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
SMOL=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf; QWEN=/tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
M="--models-dir /tmp/m --model $SMOL --device cuda:0"
H="--heads 18.7,7.7,14.3,17.3,23.2,17.4,15.6,18.6 --rerank-first-stage 1"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/a.log; local t0=$(date +%s)
  (cd /tmp && timeout $lim $R "$@") > $OUT/$name.out 2>> $OUT/a.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/a.log; grep -E '^\||^stages' $OUT/$name.out | tail -n 6; }
B="bench retrieve $M --data-dir /tmp/br --tokens 1000000 --runs 20"
s lat-rerank 120 $B --method rerank $H --pool-tokens 2048
s lat-rerank-bf16 90 $B --method rerank $H --pool-tokens 2048 --weights bf16
s lat-rerank-1024 90 $B --method rerank $H --pool-tokens 1024
s lat-rerank-7.7 90 $B --method rerank --heads 7.7 --rerank-first-stage 1 --pool-tokens 2048
s lat-rag 60 $B --method rag
s lat-hybrid 60 $B --method hybrid
# The daemon on the GPU: serve, stream 200 essays in, ask through client mode, stop it.
python3 -c "
import json,os,shutil
t=json.load(open('/tmp/pg.json'))['text']; open('/tmp/pg.txt','w').write(t)
shutil.rmtree('/tmp/pgdocs',ignore_errors=True); os.makedirs('/tmp/pgdocs')
n=200; step=len(t)//n
for i in range(n): open('/tmp/pgdocs/essay-%03d.txt'%i,'w').write(t[i*step:(i+1)*step])
"
rm -rf /tmp/sd; echo "=== serve --device cuda:0" | tee -a $OUT/a.log
(cd /tmp && timeout 400 $R serve $M --answer-model $QWEN --data-dir /tmp/sd --listen 127.0.0.1:50151 > $OUT/serve.out 2> $OUT/serve.err) &
for i in $(seq 1 60); do grep -q "listening on" $OUT/serve.out $OUT/serve.err 2>/dev/null && break; sleep 1; done
C="--server http://127.0.0.1:50151"
# "listening" comes before the models are loaded (health NOT_SERVING until then): wait for it.
for i in $(seq 1 60); do (cd /tmp && $R retrieve $C --collection none "loading?" 2>&1) | grep -q "still loading" || break; sleep 1; done
echo "serving after $i s" | tee -a $OUT/a.log
t0=$(date +%s.%N)
(cd /tmp && timeout 200 $R ingest $C --collection pg --json /tmp/pgdocs) > $OUT/serve-ingest.out 2>> $OUT/a.log
echo "ingest over gRPC rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s" | tee -a $OUT/a.log
tail -c 400 $OUT/serve-ingest.out; echo
(cd /tmp && timeout 30 $R stats $C) 2>&1 | tee -a $OUT/a.log | tail -n 8
for q in "What did the palliative care nurse list?" "Why do startups need to grow fast?" "What is the best way to get startup ideas?"; do
  t0=$(date +%s.%N)
  (cd /tmp && timeout 60 $R retrieve $C --collection pg --budget 1024 --json "$q") > /tmp/r.json 2>> $OUT/a.log
  echo "retrieve rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,2))") s: $q" | tee -a $OUT/a.log
  python3 -c "import json; e=json.load(open('/tmp/r.json')); print(e['method'], e['context_tokens'], 'tokens,', len(e['spans']), 'spans')" | tee -a $OUT/a.log
  t0=$(date +%s.%N)
  (cd /tmp && timeout 90 $R ask $C --collection pg --budget 1024 "$q") 2>> $OUT/a.log | tee -a $OUT/a.log | tail -n 4
  echo "ask rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,2))") s" | tee -a $OUT/a.log
done
pkill -TERM -f "s3mem serve" ; sleep 3; echo "serve stopped: $(tail -n 3 $OUT/serve.err)" | tee -a $OUT/a.log
# Needles: default index model and evidence, the Qwen 0.5B reader.
s needles 300 eval $M --data-dir /tmp/nd --answer-model $QWEN --methods hybrid,bm25 --budgets 1024 --answer-mode free,quote,auto --abstain-below never --out $OUT/needles /tmp/needle-eval.jsonl
grep '^|' $OUT/needles.out | head -20
