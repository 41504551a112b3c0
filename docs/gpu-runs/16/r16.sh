#!/usr/bin/env bash
# Run 16: run 15's ingest again with the store made cheaper (sealing buckets counted per run
# of blocks, bitmaps built from sorted positions, a long pack encoded on several threads):
# the 727k-token essays as one and as 200 documents, then the one-document store alone
# (`bench store-document`) and the pack encoding (`bench postings --largest 1`) on this host.
# Staged as run 15 (../13/setup.sh joins the parts: the xz'd build of this commit, SmolLM2,
# minilm, the essays).
set -u; cd "$(dirname "$0")"; OUT=${OUT:-/tmp/out16}; mkdir -p $OUT
bash ../13/setup.sh 2>&1 | tee $OUT/r16.log
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda:0"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/r16.log; local t0=$(date +%s)
  (cd /tmp && timeout $lim $R "$@") > $OUT/$name.out 2>> $OUT/r16.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/r16.log; grep -E '^\| |^\{"documents' $OUT/$name.out | cut -c1-400 | tail -n 4 | tee -a $OUT/r16.log; }
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
s store-document 100 bench store-document --data-dir /tmp/d1 --largest 1 --scratch /tmp
s postings 100 bench postings --data-dir /tmp/d1 --largest 1
python3 - $OUT <<'PY' | tee -a $OUT/r16.log
import json,sys,os
for name in ("ingest-one","ingest-many"):
    t=open(os.path.join(sys.argv[1],name+".out")).read().split("== running",1)[-1]
    r=json.JSONDecoder().raw_decode(t[t.index("\n{")+1:])[0]
    tok=sum(d["tokens"] for d in r["documents"]); g=r.get("gpu_memory") or {}
    print(f'{name}: {len(r["documents"])} docs, {tok} tokens in {r["seconds"]:.1f} s = {tok/r["seconds"]:.0f} tokens/s; scan {r["scan_seconds"]:.1f} s, encode {r["encode_seconds"]:.1f} s, store {r["store_seconds"]:.1f} s, overlapped {r.get("store_overlapped_seconds",0):.1f} s; GPU peak {g.get("peak_allocated_bytes",0)/2**20:.0f} MiB')
PY
