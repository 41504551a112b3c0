#!/bin/bash
# After the held-out baselines: the heads on dev with dense in the pool, then the probes on dev.
while kill -0 27413 2>/dev/null; do sleep 10; done
B=/work/bin/s3mem-b
cd /work/runs/s2
export S3MEM_THREADS=2
{ time nice -n 3 $B eval heads --data-dir /work/dd-dev --collection eval --dataset /work/data/hp-dev.jsonl --max-layer 24 --pool-tokens 2048 --budgets 512,1024,2048 --out heads-dev.json ; } > heads-dev.log 2>&1
{ time nice -n 3 $B eval recall --data-dir /work/dd-dev --collection eval --dataset /work/data/hp-dev.jsonl --methods bm25,dense,rag,s3 --probe attention --budgets 512,1024,2048 --per-question dev-attn.jsonl ; } > dev-attn.log 2>&1
{ time nice -n 3 $B eval recall --data-dir /work/dd-dev --collection eval --dataset /work/data/hp-dev.jsonl --methods s3 --probe keys --budgets 512,1024,2048 --per-question dev-keys.jsonl ; } > dev-keys.log 2>&1
