#!/usr/bin/env bash
# Run 19 (issue 18).
#   part p: what makes the Llama-3-8B-shape scan's MFU differ between fresh processes (run 18:
#           53.9-54.2% in some, 40.2-42.1% in others, GPU utilization 99% against 69-71%). The
#           machine's CPU, NUMA, page and allocator settings; then the same 1M-token scan in
#           fresh processes, taps copied to the host after each batch (as every run before) and
#           taps left on the device (as a GPU ingest leaves them), alternated, each under
#           threads.py (every 100 ms: per-thread user and system time, page faults, context
#           switches and the CPUs it ran on) with the GPU's utilization, power and SM clock
#           sampled beside it; then host-taps scans pinned to the GPU's NUMA node and away
#           from it (taskset), where the machine has more than one node.
#   part t: (after part p found the slow processes' model thread faulting in fresh pages for
#           every batch's host copy of the taps) the host-taps scan with glibc's malloc held
#           to reusing memory: mmap threshold fixed at 32 MiB and trim threshold 1 GiB (the
#           GLIBC_TUNABLES equivalent of mallopt at start), three fresh processes; one with
#           glibc.malloc.hugetlb=1 alone (transparent huge pages for malloc's mappings);
#           one plain for reference.
#   part u: the host-taps scan with every thread on glibc's main arena (arena_max 1) besides
#           part t's thresholds, twice, and the device-taps scan, in fresh processes.
#   part a: the build of add64ed (a scan batch's chunks SAE-encoded at once): run 18's part a
#           (../18/r18.sh a: the 727k-token essays as one and as 200 documents, with MiniLM,
#           the store alone), then part u. Needs run 18's staged payload (/tmp/st/base.tar.*,
#           the xz'd build inside).
#   part q: run 18's part q (Qwen2.5-Coder-0.5B) with this build (/tmp/st/qwen.tar.* too).
#   part v: the build of 6d3168e (GPU builds set malloc as part u's GLIBC_TUNABLES did, in
#           code): the device-taps scan, then the host-taps scan twice, fresh processes, no
#           environment; then run 18's part a again (the ingests must not lose to part a's).
#   part w: the build of 919cd0c (part v's malloc setting reverted: it slowed the ingests):
#           run 18's part a again, as part a ran it.
#   part m: GPU memory of an ingest against document length past the essays: the 16k-token
#           head, then the essays twice over as one document (1.46M tokens), the build of
#           919cd0c.
# Usage: r19.sh p|t|u|a|q|v|w|m   (carry .gpu/r19: s3mem.xz, the CUDA build, and run-on-gpu.sh)
set -u; HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../../.." && pwd)
OUT=${OUT:-/tmp/out19}; O=/tmp/o19; mkdir -p $OUT $O; PART=${1:-p}
log() { tee -a $OUT/$PART.console; }
if [ ! -x /tmp/s3mem ] && [ -f $ROOT/.gpu/r19/s3mem.xz ] && [ "$PART" != a ] && [ "$PART" != q ]; then
  xz -dc $ROOT/.gpu/r19/s3mem.xz > /tmp/s3mem && chmod +x /tmp/s3mem && cp $ROOT/.gpu/r19/run-on-gpu.sh /tmp/
fi
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
watch() { nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,utilization.gpu,temperature.gpu,pstate --format=csv,noheader,nounits -lms 200 > $O/$1.smi.csv 2>&1 & echo $!; }
gpu_summary() { python3 - $O/$1.smi.csv <<'PY' | log
import csv,sys
rows=[r for r in csv.reader(open(sys.argv[1])) if len(r)>=4 and r[0][:2]=='20']
num=lambda x: float(x) if x.strip().replace('.','',1).isdigit() else 0.0
sm=[num(r[1]) for r in rows]; pw=[num(r[2]) for r in rows]; ut=[num(r[3]) for r in rows]
busy=[i for i,p in enumerate(pw) if p>200] or list(range(len(rows)))
med=lambda v: sorted(v)[len(v)//2] if v else 0
print(f"  GPU: {len(busy)} busy samples of {len(rows)}: utilization median {med([ut[i] for i in busy]):.0f}%, power median {med([pw[i] for i in busy]):.0f} W max {max(pw) if pw else 0:.0f} W, SM MHz median {med([sm[i] for i in busy]):.0f}")
PY
}
scan() { local name=$1 taps=$2; shift 2; local SMI=$(watch $name); echo "=== $name (taps $taps) ${*:-}" | log
  (cd /tmp && timeout 150 "$@" python3 $HERE/threads.py --out $O/$name.threads.json -- $R bench scan --random-shape llama3-8b --device cuda:0 --tokens 1048576 --layers 8,16,24 --batches 8 --taps $taps --json) > $O/$name.out 2> $O/$name.err
  echo "rc=$?" | log; kill $SMI
  grep "^  thread" $O/$name.err | head -n 5 | log
  gpu_summary $name
  python3 -c "
import json;t=open('$O/$name.out').read(); i=t.index('\n{')+1; r=json.JSONDecoder().raw_decode(t[i:])[0]; x=r['scans'][0]
print('  $name: %.0f tokens/s, %.1f TFLOP/s, MFU %.1f%% of 770, %.1f s' % (x['tokens_per_s'], x['tflops'], 100*x['mfu'], x['seconds']))" 2>&1 | log; }
if [ "$PART" = p ]; then
  { echo "=== the machine"; nproc; grep -m1 "model name" /proc/cpuinfo; lscpu | grep -E "^(Socket|Core|Thread|NUMA|L3)"
    grep Cpus_allowed_list /proc/self/status; uname -r; ldd --version | head -n 1
    echo "THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled) defrag: $(cat /sys/kernel/mm/transparent_hugepage/defrag)"
    cat /proc/buddyinfo; free -g | head -n 2
    BUS=$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader | head -n 1 | tr 'A-F' 'a-f' | sed 's/^0000//')
    D=$(ls -d /sys/bus/pci/devices/*${BUS#0000} 2>/dev/null | head -n 1)
    echo "GPU $BUS: numa_node $(cat $D/numa_node 2>/dev/null) local_cpulist $(cat $D/local_cpulist 2>/dev/null)"
    nvidia-smi topo -m 2>&1 | head -n 6
    echo "tools: $(for t in perf nsys ncu gdb numactl taskset; do command -v $t >/dev/null && printf '%s ' $t; done)"
  } 2>&1 | log
  BUS=$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader | head -n 1 | tr 'A-F' 'a-f' | sed 's/^0000//')
  D=$(ls -d /sys/bus/pci/devices/*${BUS#0000} 2>/dev/null | head -n 1)
  scan host-1 host
  scan device-1 device
  scan host-2 host
  scan device-2 device
  NODES=$(ls -d /sys/devices/system/node/node* 2>/dev/null | wc -l)
  LOCAL=$(cat $D/local_cpulist 2>/dev/null)
  if [ "$NODES" -gt 1 ] && [ -n "$LOCAL" ]; then
    ALL=$(grep Cpus_allowed_list /proc/self/status | awk '{print $2}')
    REMOTE=$(python3 -c "
def parse(s):
    out=set()
    for part in s.split(','):
        a,_,b=part.partition('-'); out.update(range(int(a),int(b or a)+1))
    return out
r=sorted(parse('$ALL')-parse('$LOCAL')); print(','.join(map(str,r)))")
    echo "nodes $NODES; GPU-local CPUs $LOCAL; others allowed: $REMOTE" | log
    scan host-local host taskset -c $LOCAL
    [ -n "$REMOTE" ] && scan host-remote host taskset -c $REMOTE
  else
    echo "one NUMA node ($NODES): pinning to half the cores instead" | log
    scan host-pinned-low host taskset -c 0-7
  fi
fi
if [ "$PART" = t ]; then
  KEEP=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824
  scan host-keep-1 host env GLIBC_TUNABLES=$KEEP
  scan host-keep-2 host env GLIBC_TUNABLES=$KEEP
  scan host-plain host
  scan host-keep-3 host env GLIBC_TUNABLES=$KEEP
  scan host-hugetlb host env GLIBC_TUNABLES=glibc.malloc.hugetlb=1
fi
if [ "$PART" = v ]; then
  [ -x /tmp/s3mem ] || bash $HERE/../18/setup.sh 2>&1 | log
  # The device-taps scan first: a machine's first process compiles the kernels (and was the
  # fast one in parts p and t), so both host-taps scans come after it.
  scan device-v device
  scan host-v1 host
  scan host-v2 host
fi
if [ "$PART" = m ]; then
  bash $HERE/../18/setup.sh > /dev/null 2>&1
  python3 -c "
import json; t=json.load(open('/tmp/pg.json'))['text']; open('/tmp/pg.txt','w').write(t)
open('/tmp/pg16k.txt','w').write(t[:70000]); open('/tmp/pg2x.txt','w').write(t+'\n'+t)"
  for doc in pg16k pg2x; do
    rm -rf /tmp/dmem-$doc
    (cd /tmp && timeout 120 $R ingest --models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda:0 --embedder none --collection pg --json --data-dir /tmp/dmem-$doc /tmp/$doc.txt) > $O/mem-$doc.out 2> $O/mem-$doc.err
    echo "=== ingest $doc rc=$?" | log
    python3 -c "
import json; t=open('$O/mem-$doc.out').read(); r=json.JSONDecoder().raw_decode(t[t.index('\n{')+1:])[0]
tok=sum(d['tokens'] for d in r['documents']); g=r['gpu_memory']
print(f\"  {tok} tokens in {r['seconds']:.1f} s = {tok/r['seconds']:.0f} tokens/s (load {r['load_seconds']:.1f}, scan {r['scan_seconds']:.1f}, encode {r['encode_seconds']:.1f}, store {r['store_seconds']:.1f}); GPU peak allocated {g['peak_allocated_bytes']} B = {g['peak_allocated_bytes']/2**20:.0f} MiB, peak reserved {g['peak_reserved_bytes']/2**20:.0f} MiB\")" 2>&1 | log
  done
fi
if [ "$PART" = a ] || [ "$PART" = q ] || [ "$PART" = v ] || [ "$PART" = w ]; then
  P=$PART; [ $P = v ] || [ $P = w ] && P=a
  OUT=$OUT bash $HERE/../18/r18.sh $P
  [ -x /tmp/s3mem ] || exit 3
fi
if [ "$PART" = u ] || [ "$PART" = a ]; then
  # (part a's build; part v checks the same in code)
  ONE=glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824
  scan host-arena1-1 host env GLIBC_TUNABLES=$ONE
  scan host-arena1-2 host env GLIBC_TUNABLES=$ONE
  scan device-3 device
fi
tar -C $O -cJf $OUT/$PART.r19.tar.xz . 2>/dev/null
ls -la $OUT
