#!/usr/bin/env bash
# Run 17 (issues 18 and 15): the build with postings gathered on a thread per layer beside the
# encoding (and the scan), the cheaper store (session 11) and the first stage's host work in
# parts on several threads (S3 frequencies, token scores, dense vectors).
#   part a: the 727k-token essays as one and as 200 documents, the store alone on this host
#           (`bench store-document`, `bench postings`), question latency at 1M tokens (rerank
#           f32 / bf16, hybrid, rag);
#   part b: the Llama-3-8B-shape scan in fresh processes with the SM clock sampled, and the
#           daemon on the GPU (`serve --device cuda:0`, 200 essays through `ingest --server`);
#   part c: (issue 15 item 3) SAEs for the retrieval heads only (`sae train --heads`: one per
#           KV head the 8 heads chosen on hp-dev read, 6 SAEs), trained as the default set was
#           (4 epochs) on 1.1M tokens (the 20 hp-dev2 contexts and the essays), against the
#           embedded default set: S3 alone on the first 100 hp-dev2 questions, side by side;
#   part d: the same two sets on the 307 held-out hp-test questions (no choice made there);
#   part e: the daemon's ingest of part b again without the embedding model (`serve
#           --embedder none`): how much of part b's "encoding" was MiniLM on the host.
# Staged as run 15 (../13/setup.sh joins the parts: the xz'd build, SmolLM2, minilm, essays,
# and for parts c-d the hp-dev2 contexts and questions and hp-test). Usage: r17.sh a|b|c|d
set -u; cd "$(dirname "$0")"; OUT=${OUT:-/tmp/out17}; mkdir -p $OUT; PART=${1:-a}
bash ../13/setup.sh 2>&1 | tee -a $OUT/r17.log
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
SMOL=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
M="--models-dir /tmp/m --model $SMOL --device cuda:0"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/r17.log; local t0=$(date +%s)
  (cd /tmp && timeout $lim $R "$@") > $OUT/$name.out 2>> $OUT/r17.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/r17.log; grep -E '^\| |^stages|^\{"documents' $OUT/$name.out | cut -c1-600 | tail -n 6 | tee -a $OUT/r17.log; }
[ -f /tmp/pgdocs/essay-199.txt ] || python3 -c "
import json,os,shutil
t=json.load(open('/tmp/pg.json'))['text']; open('/tmp/pg.txt','w').write(t)
shutil.rmtree('/tmp/pgdocs',ignore_errors=True); os.makedirs('/tmp/pgdocs')
n=200; step=len(t)//n
for i in range(n): open('/tmp/pgdocs/essay-%03d.txt'%i,'w').write(t[i*step:(i+1)*step])
"
report() { python3 - $OUT "$@" <<'PY' | tee -a $OUT/r17.log
import json,sys,os
for name in sys.argv[2:]:
    try:
        t=open(os.path.join(sys.argv[1],name+".out")).read().split("== running",1)[-1]
        r=json.JSONDecoder().raw_decode(t[t.index("\n{")+1:])[0]
    except Exception as e: print(name, "no report:", e); continue
    tok=sum(d["tokens"] for d in r["documents"]); g=r.get("gpu_memory") or {}; sec=r["seconds"]
    print(f'{name}: {len(r["documents"])} docs, {tok} tokens in {sec:.1f} s = {tok/sec:.0f} tokens/s; scan {r["scan_seconds"]:.1f} s, encode {r["encode_seconds"]:.1f} s, store {r["store_seconds"]:.1f} s, overlapped {r.get("store_overlapped_seconds",0):.1f} s; GPU peak {g.get("peak_allocated_bytes",0)/2**20:.0f} MiB')
PY
}
if [ "$PART" = a ]; then
  rm -rf /tmp/d1 /tmp/dm /tmp/d16k
  I="ingest $M --embedder none --collection pg --json"
  head -c 70000 /tmp/pg.txt > /tmp/pg16k.txt
  s ingest-16k 100 $I --data-dir /tmp/d16k /tmp/pg16k.txt
  s ingest-one 100 $I --data-dir /tmp/d1 /tmp/pg.txt
  s ingest-many 100 $I --data-dir /tmp/dm /tmp/pgdocs
  report ingest-16k ingest-one ingest-many
  s store-document 100 bench store-document --data-dir /tmp/d1 --largest 1 --scratch /tmp
  s postings 60 bench postings --data-dir /tmp/d1 --largest 1
  H="--heads 18.7,7.7,14.3,17.3,23.2,17.4,15.6,18.6 --rerank-first-stage 1"
  B="bench retrieve $M --data-dir /tmp/br --tokens 1000000 --runs 20"
  s lat-rerank 150 $B --method rerank $H --pool-tokens 2048
  s lat-rerank-bf16 60 $B --method rerank $H --pool-tokens 2048 --weights bf16
  s lat-hybrid 60 $B --method hybrid
  s lat-rag 60 $B --method rag
fi
HEADS=18.7,7.7,14.3,17.3,23.2,17.4,15.6,18.6
E="--embedder none --methods s3,bm25 --budgets 512,1024,2048"
if [ "$PART" = c ]; then
  s sae-heads 330 sae train $M --corpus /tmp/hp-dev2-contexts.jsonl /tmp/pg.txt --heads $HEADS --tokens 1100000 --epochs 4 --out /tmp/sae-heads --json
  python3 -c "
import json; r=json.load(open('/tmp/sae-heads/report.json'))
print('heads', r.get('retrieval_heads'), 'scan', round(r['scan_seconds']), 's train', round(r['train_seconds']), 's')
for e in r['heldout']: print(' layer', e['layer'], e['head'], 'fvu keys', round(e['fvu_keys'],3), 'dead', round(e['dead_frac'],3))
" 2>&1 | tee -a $OUT/r17.log
  s dev-default 120 eval recall $M --data-dir /tmp/ev-def --dataset /tmp/hp-dev2.jsonl --limit 100 $E --per-question $OUT/dev-default.jsonl
  s dev-heads 120 eval recall $M --sae /tmp/sae-heads --data-dir /tmp/ev-heads --dataset /tmp/hp-dev2.jsonl --limit 100 $E --per-question $OUT/dev-heads.jsonl
fi
if [ "$PART" = d ]; then
  s test-default 280 eval recall $M --data-dir /tmp/et-def --dataset /tmp/hp-test.jsonl $E --per-question $OUT/test-default.jsonl
  s test-heads 280 eval recall $M --sae /tmp/sae-heads --data-dir /tmp/et-heads --dataset /tmp/hp-test.jsonl $E --per-question $OUT/test-heads.jsonl
fi
if [ "$PART" = e ]; then
  rm -rf /tmp/se; echo "=== serve --device cuda:0 --embedder none" | tee -a $OUT/r17.log
  (cd /tmp && timeout 150 $R serve $M --embedder none --data-dir /tmp/se --listen 127.0.0.1:50152 > $OUT/serve-e.out 2> $OUT/serve-e.err) &
  C="--server http://127.0.0.1:50152"
  for i in $(seq 1 90); do (cd /tmp && $R retrieve $C --collection none "loading?" 2>&1) | grep -q -E "still loading|connect|refused|unavailable" || break; sleep 1; done
  echo "serving after $i s" | tee -a $OUT/r17.log
  t0=$(date +%s.%N)
  (cd /tmp && timeout 120 $R ingest $C --collection pg --json /tmp/pgdocs) > $OUT/serve-e-ingest.out 2>> $OUT/r17.log
  echo "ingest over gRPC rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s" | tee -a $OUT/r17.log
  report serve-e-ingest
  pkill -TERM -f "s3mem serve"; sleep 2; echo "serve stopped: $(tail -n 2 $OUT/serve-e.err)" | tee -a $OUT/r17.log
fi
if [ "$PART" = b ]; then
  for run in mfu-1m-first mfu-65k mfu-1m-again; do
    case $run in mfu-65k) T=65536;; *) T=1048576;; esac
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 200 > $OUT/$run.clocks.csv 2>&1 &
    SMI=$!
    s $run 120 bench scan --random-shape llama3-8b --device cuda:0 --tokens $T --layers 8,16,24 --batches 8 --json
    kill $SMI
    python3 - $OUT/$run.clocks.csv <<'PY' | tee -a $OUT/r17.log
import csv,sys
rows=[r for r in csv.reader(open(sys.argv[1])) if r and r[0][:2]=='20']
sm=[float(r[1].split()[0]) for r in rows]; pw=[float(r[3].split()[0]) for r in rows if r[3].strip()[0].isdigit()]
busy=[x for x,p in zip(sm,pw) if p>200] or sm
print(f"  clocks: {len(rows)} samples, SM MHz min/median/max {min(sm):.0f}/{sorted(sm)[len(sm)//2]:.0f}/{max(sm):.0f}, while busy (>200 W) median {sorted(busy)[len(busy)//2]:.0f}; power max {max(pw) if pw else 0:.0f} W; throttle reasons seen: {sorted(set(r[5].strip() for r in rows))}")
PY
  done
  rm -rf /tmp/sd; echo "=== serve --device cuda:0" | tee -a $OUT/r17.log
  (cd /tmp && timeout 300 $R serve $M --data-dir /tmp/sd --listen 127.0.0.1:50151 > $OUT/serve.out 2> $OUT/serve.err) &
  C="--server http://127.0.0.1:50151"
  for i in $(seq 1 90); do (cd /tmp && $R retrieve $C --collection none "loading?" 2>&1) | grep -q -E "still loading|connect|refused|unavailable" || break; sleep 1; done
  echo "serving after $i s" | tee -a $OUT/r17.log
  t0=$(date +%s.%N)
  (cd /tmp && timeout 200 $R ingest $C --collection pg --json /tmp/pgdocs) > $OUT/serve-ingest.out 2>> $OUT/r17.log
  echo "ingest over gRPC rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s" | tee -a $OUT/r17.log
  report serve-ingest
  for q in "What did the palliative care nurse list?" "Why do startups need to grow fast?"; do
    t0=$(date +%s.%N)
    (cd /tmp && timeout 60 $R ask $C --collection pg --budget 1024 "$q") 2>> $OUT/r17.log | tee -a $OUT/r17.log | tail -n 3
    echo "ask rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,2))") s" | tee -a $OUT/r17.log
  done
  pkill -TERM -f "s3mem serve"; sleep 3; echo "serve stopped: $(tail -n 3 $OUT/serve.err)" | tee -a $OUT/r17.log
fi
