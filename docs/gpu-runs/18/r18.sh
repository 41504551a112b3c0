#!/usr/bin/env bash
# Run 18 (issues 18 and 20): the build where the embedding model follows --device.
#   part a: (18) the 727k-token essays as one and as 200 documents without the embedding model
#           (run 17's part a, on this card), the 200 documents again with MiniLM on the GPU
#           (passage vectors for the dense methods), and the store alone on this host;
#   part b: (18) the Llama-3-8B-shape scan over 1M tokens in a fresh process, SM clock
#           sampled; the daemon on the GPU with MiniLM (`serve --device cuda:0`, 200 essays
#           through `ingest --server`, two questions);
#   part g: (18) the card's own bf16 matrix-product rate (gemm.py: a burst as KINDS.md measured
#           it, then 40 s sustained, SM clock sampled), and the Llama-3-8B-shape scan over 1M
#           tokens in a fresh process right after it under the same cap;
#   part h: (18) what sets the sustained MFU: the same 1M-token scan in three fresh processes,
#           the first two back to back, the third after 20 s of matrix products (gemm.py),
#           with SM clock, power, utilization and performance state sampled beside each;
#   part m: (18) part h's first two scans again with the build of 1ab2c68 (taps copied to the
#           host on the caller's thread, beside the next batch);
#   part q: (18) Qwen2.5-Coder-0.5B: an SAE set trained on the device (as run 13), the essays
#           as one and as 200 documents;
#   part c: (18) the daemon's ingest with MiniLM again, the build of fbe4e9e: one ingest
#           worker and one call at a time (as part b), then two workers and four calls in
#           flight (`serve --ingest-workers 2`, `ingest --server --in-flight 4`: a document
#           is stored while the next is scanned);
#   part r: (20) the reader's instruction: Qwen2.5-Coder-0.5B answering from the default
#           evidence (hybrid@1024 with MiniLM, best first) on the first 100 hp-dev2 questions
#           with four instructions; the one with the best development F1 and the current one
#           then on the 155 held-out hpq-fit questions (nothing chosen there).
# Usage: r18.sh a|b|c|g|h|m|q|r   (after the payload is staged: setup.sh)
set -u; cd "$(dirname "$0")"; OUT=${OUT:-/tmp/out18}; mkdir -p $OUT /tmp/o18; PART=${1:-a}
bash setup.sh 2>&1 | tee -a $OUT/$PART.console
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
SMOL=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
QWEN=/tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
M="--models-dir /tmp/m --model $SMOL --device cuda:0"
log() { tee -a $OUT/$PART.console; }
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | log; local t0=$(date +%s)
  (cd /tmp && timeout $lim $R "$@") > /tmp/o18/$name.out 2>> /tmp/o18/$PART.err; echo "rc=$? $(( $(date +%s)-t0 )) s" | log; grep -E '^\| |^stages|^\{"documents' /tmp/o18/$name.out | cut -c1-600 | tail -n 6 | log; }
[ -f /tmp/pgdocs/essay-199.txt ] || python3 -c "
import json,os,shutil
t=json.load(open('/tmp/pg.json'))['text']; open('/tmp/pg.txt','w').write(t)
shutil.rmtree('/tmp/pgdocs',ignore_errors=True); os.makedirs('/tmp/pgdocs')
n=200; step=len(t)//n
for i in range(n): open('/tmp/pgdocs/essay-%03d.txt'%i,'w').write(t[i*step:(i+1)*step])
"
report() { python3 - /tmp/o18 "$@" <<'PY' | log
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
clocks() { nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 200 > /tmp/o18/$1.clocks.csv 2>&1 & echo $!; }
clock_summary() { python3 - /tmp/o18/$1.clocks.csv <<'PY' | log
import csv,sys
rows=[r for r in csv.reader(open(sys.argv[1])) if r and r[0][:2]=='20']
sm=[float(r[1].split()[0]) for r in rows]; pw=[float(r[3].split()[0]) for r in rows if r[3].strip()[0].isdigit()]
busy=[x for x,p in zip(sm,pw) if p>200] or sm
print(f"  clocks: {len(rows)} samples, SM MHz min/median/max {min(sm):.0f}/{sorted(sm)[len(sm)//2]:.0f}/{max(sm):.0f}, while busy (>200 W) median {sorted(busy)[len(busy)//2]:.0f}; power max {max(pw) if pw else 0:.0f} W; throttle reasons seen: {sorted(set(r[5].strip() for r in rows))}")
PY
}
if [ "$PART" = a ]; then
  rm -rf /tmp/d1 /tmp/dm /tmp/dmv /tmp/d16k
  I="ingest $M --embedder none --collection pg --json"
  head -c 70000 /tmp/pg.txt > /tmp/pg16k.txt
  s ingest-16k 100 $I --data-dir /tmp/d16k /tmp/pg16k.txt
  s ingest-one 100 $I --data-dir /tmp/d1 /tmp/pg.txt
  s ingest-many 100 $I --data-dir /tmp/dm /tmp/pgdocs
  s ingest-many-minilm 150 ingest $M --collection pg --json --data-dir /tmp/dmv /tmp/pgdocs
  report ingest-16k ingest-one ingest-many ingest-many-minilm
  s store-document 100 bench store-document --data-dir /tmp/d1 --largest 1 --scratch /tmp
fi
if [ "$PART" = b ]; then
  for run in mfu-1m; do
    SMI=$(clocks $run)
    s $run 120 bench scan --random-shape llama3-8b --device cuda:0 --tokens 1048576 --layers 8,16,24 --batches 8 --json
    kill $SMI; clock_summary $run
  done
  rm -rf /tmp/sd; echo "=== serve --device cuda:0 (MiniLM on the device)" | log
  (cd /tmp && timeout 200 $R serve $M --data-dir /tmp/sd --listen 127.0.0.1:50151 > /tmp/o18/serve.out 2> /tmp/o18/serve.err) &
  C="--server http://127.0.0.1:50151"
  for i in $(seq 1 90); do (cd /tmp && $R retrieve $C --collection none "loading?" 2>&1) | grep -q -E "still loading|connect|refused|unavailable" || break; sleep 1; done
  echo "serving after $i s" | log
  t0=$(date +%s.%N)
  (cd /tmp && timeout 150 $R ingest $C --collection pg --json /tmp/pgdocs) > /tmp/o18/serve-ingest.out 2>> /tmp/o18/b.err
  echo "ingest over gRPC rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s" | log
  report serve-ingest
  for q in "What did the palliative care nurse list?" "Why do startups need to grow fast?"; do
    t0=$(date +%s.%N)
    (cd /tmp && timeout 60 $R ask $C --collection pg --method rag --budget 1024 "$q") 2>> /tmp/o18/b.err | log | tail -n 3
    echo "ask (rag: dense vectors from the device) rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,2))") s" | log
  done
  pkill -TERM -f "s3mem serve"; sleep 3; echo "serve stopped: $(tail -n 3 /tmp/o18/serve.err)" | log
fi
if [ "$PART" = c ]; then
  port=50160
  for cfg in "1 1" "2 4"; do
    set -- $cfg; W=$1; F=$2; port=$((port+1)); name=serve-w$W-f$F
    rm -rf /tmp/sc; echo "=== serve --device cuda:0 --ingest-workers $W; ingest --server --in-flight $F" | log
    (cd /tmp && timeout 150 $R serve $M --ingest-workers $W --data-dir /tmp/sc --listen 127.0.0.1:$port > /tmp/o18/$name.serve.out 2> /tmp/o18/$name.serve.err) &
    C="--server http://127.0.0.1:$port"
    for i in $(seq 1 90); do (cd /tmp && $R retrieve $C --collection none "loading?" 2>&1) | grep -q -E "still loading|connect|refused|unavailable" || break; sleep 1; done
    t0=$(date +%s.%N)
    (cd /tmp && timeout 120 $R ingest $C --in-flight $F --collection pg --json /tmp/pgdocs) > /tmp/o18/$name.out 2>> /tmp/o18/c.err
    echo "ingest over gRPC rc=$? $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s" | log
    report $name
    pkill -TERM -f "s3mem serve"; sleep 3; echo "serve stopped: $(tail -n 1 /tmp/o18/$name.serve.err)" | log
  done
fi
if [ "$PART" = g ]; then
  PY=$(ls /opt/torch/.venv/bin/python 2>/dev/null || echo python3)
  SMI=$(clocks gemm)
  echo "=== gemm.py 40 ($PY)" | log
  timeout 120 $PY gemm.py 40 2>> /tmp/o18/g.err | tee /tmp/o18/gemm.out | python3 -c "
import json,sys; r=json.loads(sys.stdin.read()); print({k:v for k,v in r.items() if k!='per_second'})" | log
  kill $SMI; clock_summary gemm
  SMI=$(clocks mfu-1m-g)
  s mfu-1m-g 120 bench scan --random-shape llama3-8b --device cuda:0 --tokens 1048576 --layers 8,16,24 --batches 8 --json
  kill $SMI; clock_summary mfu-1m-g
  grep -o '"tflops":[0-9.]*,"mfu":[0-9.]*' /tmp/o18/mfu-1m-g.out | log
fi
if [ "$PART" = h ] || [ "$PART" = m ]; then
  PY=$(ls /opt/torch/.venv/bin/python 2>/dev/null || echo python3)
  watch() { nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active,utilization.gpu,pstate --format=csv -lms 200 > /tmp/o18/$1.clocks.csv 2>&1 & echo $!; }
  summary() { python3 - /tmp/o18/$1.clocks.csv <<'PY' | log
import csv,sys
rows=[r for r in csv.reader(open(sys.argv[1])) if r and r[0][:2]=='20']
num=lambda x: float(x.split()[0]) if x.strip()[:1].isdigit() else 0.0
sm=[num(r[1]) for r in rows]; pw=[num(r[3]) for r in rows]; ut=[num(r[6]) for r in rows]; tc=[num(r[4]) for r in rows]
busy=[i for i,p in enumerate(pw) if p>200] or list(range(len(rows)))
med=lambda v: sorted(v)[len(v)//2]
print(f"  {len(rows)} samples, busy {len(busy)}: SM MHz median {med([sm[i] for i in busy]):.0f}, power median {med([pw[i] for i in busy]):.0f} W max {max(pw):.0f} W, utilization median {med([ut[i] for i in busy]):.0f}%, temperature max {max(tc):.0f} C, pstates {sorted(set(r[7].strip() for r in rows))}, throttle {sorted(set(r[5].strip() for r in rows))}")
PY
  }
  scan() { local name=$1; SMI=$(watch $name)
    s $name 120 bench scan --random-shape llama3-8b --device cuda:0 --tokens 1048576 --layers 8,16,24 --batches 8 --json
    kill $SMI; summary $name
    python3 -c "
import json;t=open('/tmp/o18/$name.out').read(); i=t.index('\n{')+1; r=json.JSONDecoder().raw_decode(t[i:])[0]; x=r['scans'][0]
print('  $name: %.0f tokens/s, %.1f TFLOP/s, MFU %.1f%% of 770, %.1f s' % (x['tokens_per_s'], x['tflops'], 100*x['mfu'], x['seconds']))" | log; }
  nvidia-smi -q -d PERFORMANCE,POWER > /tmp/o18/smi-before-$PART.txt 2>&1
  if [ "$PART" = m ]; then scan mfu-m-first; cp /tmp/o18/*.console $OUT/ 2>/dev/null; scan mfu-m-second; fi
fi
if [ "$PART" = h ]; then
  scan mfu-h-first
  scan mfu-h-second
  SMI=$(watch gemm-h); echo "=== gemm.py 20" | log
  timeout 60 $PY gemm.py 20 2>> /tmp/o18/h.err | tee /tmp/o18/gemm-h.out | cut -c1-200 | log
  kill $SMI; summary gemm-h
  scan mfu-h-after-gemm
fi
if [ "$PART" = q ]; then
  Q="--models-dir /tmp/m --model $QWEN --device cuda:0"
  rm -rf /tmp/q1 /tmp/qm /tmp/sae-qwen
  s sae-qwen 200 sae train $Q --corpus /tmp/pg.txt --layers 6,12,18 --tokens 250000 --epochs 1 --out /tmp/sae-qwen --json
  s qwen-ingest-one 150 ingest $Q --embedder none --sae /tmp/sae-qwen --data-dir /tmp/q1 --collection pg --json /tmp/pg.txt
  s qwen-ingest-many 150 ingest $Q --embedder none --sae /tmp/sae-qwen --data-dir /tmp/qm --collection pg --json /tmp/pgdocs
  report qwen-ingest-one qwen-ingest-many
fi
if [ "$PART" = r ]; then
  V=("Only give me the answer and do not output any other words."
     "Answer with the shortest words from the evidence that answer the question (a name, place, date or number, or yes or no), not a sentence."
     "Only give me the answer, in as few words as possible: no sentence and no explanation."
     "Answer in at most five words.")
  EV="eval $M --answer-model $QWEN --methods hybrid --budgets 1024 --answer-mode free --abstain-below never --max-new-tokens 32"
  for i in 0 1 2 3; do
    s dev-v$i 150 $EV /tmp/hp-dev2.jsonl --limit 100 --data-dir /tmp/ed --instruction "${V[$i]}" --out /tmp/o18/dev-v$i
  done
  best=$(python3 -c "
import json
f=[json.load(open('/tmp/o18/dev-v%d/report.json'%i))['rows'][0]['f1'] for i in range(4)]
print(max(range(4), key=lambda i: f[i]))")
  echo "development F1 per instruction: $(python3 -c "
import json; print([round(100*json.load(open('/tmp/o18/dev-v%d/report.json'%i))['rows'][0]['f1'],1) for i in range(4)])"); chosen v$best" | log
  for i in 0 $best; do
    [ -d /tmp/o18/test-v$i ] && continue
    s test-v$i 200 $EV /tmp/hpq-fit.jsonl --data-dir /tmp/et --instruction "${V[$i]}" --out /tmp/o18/test-v$i
  done
fi
tar -C /tmp/o18 -cJf $OUT/$PART.tar.xz --exclude='*.png' . 2>/dev/null
ls -la $OUT
