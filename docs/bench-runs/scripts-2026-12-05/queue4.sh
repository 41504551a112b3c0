#!/bin/bash
# After queue2 (dd-dev is upgraded to store format 4 by this binary): hybrid with and without dense on dev.
while pgrep -f queue2.sh >/dev/null; do sleep 10; done
B=/work/bin/s3mem-c
cd /work/runs/s2
export S3MEM_THREADS=2
{ time nice -n 3 $B eval recall --data-dir /work/dd-dev --collection eval --dataset /work/data/hp-dev.jsonl --methods rag,hybrid --hybrid-dense --budgets 512,1024,2048 --per-question dev-hybrid-dense.jsonl ; } > dev-hybrid-dense.log 2>&1
