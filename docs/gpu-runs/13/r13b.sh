#!/usr/bin/env bash
# Run 13b: (issue 18) ingest with Qwen2.5-Coder-0.5B on the GPU: an SAE set trained on the
# device first (keys, layers 6,12,18, 250k tokens of the essays), then the 727k-token essay
# corpus as one document and as 200 documents, tokens/s and the scan/encode/store split;
# the Llama-3-8B-shape scan over 1M tokens in fresh processes with the SM clock, power and
# temperature logged every 200 ms (nvidia-smi) beside it, then 65k tokens, then 1M again.
set -u; cd "$(dirname "$0")"; OUT=${OUT:-/tmp/out13}; mkdir -p $OUT
bash setup.sh > /dev/null 2>&1
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
QWEN=/tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf
Q="--models-dir /tmp/m --model $QWEN --device cuda:0 --embedder none"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/b.log; local t0=$(date +%s)
  (cd /tmp && timeout $lim $R "$@") > $OUT/$name.out 2>> $OUT/b.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/b.log; tail -c 600 $OUT/$name.out; echo; }
[ -f /tmp/pg.txt ] || python3 -c "
import json,os,shutil
t=json.load(open('/tmp/pg.json'))['text']; open('/tmp/pg.txt','w').write(t)
shutil.rmtree('/tmp/pgdocs',ignore_errors=True); os.makedirs('/tmp/pgdocs')
n=200; step=len(t)//n
for i in range(n): open('/tmp/pgdocs/essay-%03d.txt'%i,'w').write(t[i*step:(i+1)*step])
"
s sae-qwen 200 sae train $Q --corpus /tmp/pg.txt --layers 6,12,18 --tokens 250000 --epochs 1 --out /tmp/sae-qwen --json
rm -rf /tmp/q1 /tmp/qm
s qwen-ingest-one 150 ingest $Q --sae /tmp/sae-qwen --data-dir /tmp/q1 --collection pg --json /tmp/pg.txt
s qwen-ingest-many 150 ingest $Q --sae /tmp/sae-qwen --data-dir /tmp/qm --collection pg --json /tmp/pgdocs
python3 - "$OUT" <<'PY' | tee -a $OUT/b.log
import json,sys,os
for name in ("qwen-ingest-one","qwen-ingest-many"):
    try: r=json.loads(open(os.path.join(sys.argv[1],name+".out")).read().strip().splitlines()[-1])
    except Exception as e: print(name, "no report:", e); continue
    tok=sum(d["tokens"] for d in r["documents"]); g=r.get("gpu_memory") or {}; sec=r["seconds"]
    print(f'{name}: {len(r["documents"])} docs, {tok} tokens in {sec:.1f} s = {tok/sec:.0f} tokens/s; '
          f'scan {r["scan_seconds"]:.1f} s ({100*r["scan_seconds"]/sec:.0f}%), encode {r["encode_seconds"]:.1f} s ({100*r["encode_seconds"]/sec:.0f}%), store {r["store_seconds"]:.1f} s'
          + (f', store overlapped {r["store_overlapped_seconds"]:.1f} s' if "store_overlapped_seconds" in r else '')
          + (f'; GPU peak allocated {g.get("peak_allocated_bytes",0)/2**20:.0f} MiB' if g else ''))
PY
# Sustained MFU: fresh processes, clocks logged beside each.
for run in mfu-1m-first mfu-65k mfu-1m-again; do
  case $run in mfu-65k) T=65536;; *) T=1048576;; esac
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 200 > $OUT/$run.clocks.csv 2>&1 &
  SMI=$!
  s $run 120 bench scan --random-shape llama3-8b --device cuda:0 --tokens $T --layers 8,16,24 --batches 8 --json
  kill $SMI
  python3 - $OUT/$run.clocks.csv <<'PY' | tee -a $OUT/b.log
import csv,sys
rows=[r for r in csv.reader(open(sys.argv[1])) if r and r[0][:2]=='20']
sm=[float(r[1].split()[0]) for r in rows]; pw=[float(r[3].split()[0]) for r in rows if r[3].strip()[0].isdigit()]
busy=[x for x,p in zip(sm,pw) if p>200] or sm
print(f"  clocks: {len(rows)} samples, SM MHz min/median/max {min(sm):.0f}/{sorted(sm)[len(sm)//2]:.0f}/{max(sm):.0f}, while busy (>200 W) median {sorted(busy)[len(busy)//2]:.0f}; power max {max(pw) if pw else 0:.0f} W; throttle reasons seen: {sorted(set(r[5].strip() for r in rows))}")
PY
done
