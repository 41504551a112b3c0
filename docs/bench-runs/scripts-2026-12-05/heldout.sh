#!/bin/bash
# Held-out (hp-test, 307 q): the baselines and S3 side by side; then the probe on dev.
B=/work/bin/s3mem-a
cd /work/runs/s2
export S3MEM_THREADS=2
{ time nice -n 3 $B eval recall --data-dir /work/dd-test --collection eval --dataset /work/data/hp-test.jsonl --methods bm25,dense,rag,s3,hybrid --budgets 512,1024,2048 --per-question test-base.jsonl ; } > test-base.log 2>&1
{ time nice -n 3 $B eval recall --data-dir /work/dd-dev --collection eval --dataset /work/data/hp-dev.jsonl --methods bm25,s3 --probe attention --budgets 512,1024,2048 --per-question dev-attn.jsonl ; } > dev-attn.log 2>&1
{ time nice -n 3 $B eval recall --data-dir /work/dd-dev --collection eval --dataset /work/data/hp-dev.jsonl --methods bm25,s3 --probe queries --budgets 512,1024,2048 --per-question dev-queries.jsonl ; } > dev-queries.log 2>&1
{ time nice -n 3 $B eval recall --data-dir /work/dd-test --collection eval --dataset /work/data/hp-test.jsonl --methods bm25,rag,rerank --heads 18.7,7.7,17.3,14.3 --pool-tokens 2048 --budgets 512,1024,2048 --per-question test-rerank.jsonl ; } > test-rerank.log 2>&1
