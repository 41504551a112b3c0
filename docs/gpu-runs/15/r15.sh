#!/usr/bin/env bash
# Ran in session 11 on an H200 with the build of 2f46f67 (outputs in out/).
# Run 15: run 14 again after two changes: re-ranking reads its pool in one piece on a GPU (run
# 14's 512-token pieces cost the H100 12 ms), and ingest gathers postings in lists found by
# index instead of a sorted map (the host work that kept run 14's encoding at 11.8 s).
# Question latency at 1M tokens (rerank in f32 and bf16) and the 727k-token
# ingest as one and as 200 documents. Staged as run 14 (../13/setup.sh joins the parts).
set -u; cd "$(dirname "$0")"; OUT=${OUT:-/tmp/out15}; mkdir -p $OUT
bash ../13/setup.sh 2>&1 | tee $OUT/r15.log
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda:0"
H="--heads 18.7,7.7,14.3,17.3,23.2,17.4,15.6,18.6 --rerank-first-stage 1"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/r15.log; local t0=$(date +%s)
  (cd /tmp && timeout $lim $R "$@") > $OUT/$name.out 2>> $OUT/r15.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/r15.log; grep -E '^\| [0-9]|^stages|^\{"documents' $OUT/$name.out | cut -c1-600 | tail -n 3 | tee -a $OUT/r15.log; }
B="bench retrieve $M --data-dir /tmp/br --tokens 1000000 --runs 20"
s lat-rerank 120 $B --method rerank $H --pool-tokens 2048
s lat-rerank-bf16 90 $B --method rerank $H --pool-tokens 2048 --weights bf16
python3 -c "
import json,os,shutil
t=json.load(open('/tmp/pg.json'))['text']; open('/tmp/pg.txt','w').write(t)
shutil.rmtree('/tmp/pgdocs',ignore_errors=True); os.makedirs('/tmp/pgdocs')
n=200; step=len(t)//n
for i in range(n): open('/tmp/pgdocs/essay-%03d.txt'%i,'w').write(t[i*step:(i+1)*step])
"
rm -rf /tmp/d1 /tmp/dm
I="ingest $M --embedder none --collection pg --json"
s ingest-one 100 $I --data-dir /tmp/d1 /tmp/pg.txt
s ingest-many 100 $I --data-dir /tmp/dm /tmp/pgdocs
python3 - $OUT <<'PY' | tee -a $OUT/r15.log
import json,sys,os
for name in ("ingest-one","ingest-many"):
    t=open(os.path.join(sys.argv[1],name+".out")).read().split("== running",1)[-1]
    r=json.JSONDecoder().raw_decode(t[t.index("\n{")+1:])[0]
    tok=sum(d["tokens"] for d in r["documents"]); g=r.get("gpu_memory") or {}
    print(f'{name}: {len(r["documents"])} docs, {tok} tokens in {r["seconds"]:.1f} s = {tok/r["seconds"]:.0f} tokens/s; scan {r["scan_seconds"]:.1f} s, encode {r["encode_seconds"]:.1f} s, store {r["store_seconds"]:.1f} s, overlapped {r.get("store_overlapped_seconds",0):.1f} s; GPU peak {g.get("peak_allocated_bytes",0)/2**20:.0f} MiB')
PY
