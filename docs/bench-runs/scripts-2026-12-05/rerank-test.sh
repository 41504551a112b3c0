#!/bin/bash
# Held-out re-ranking with the configuration chosen on hp-dev (heads-dev.log): the best 8 heads
# fused with the first stage's order (weight 1), pool 2048 tokens; the first 100 questions.
cd /work/runs/s2
export S3MEM_THREADS=2
{ time /work/bin/s3mem-c eval recall --data-dir /work/dd-test --collection eval --dataset /work/data/hp-test.jsonl --limit 100 --methods bm25,rag,hybrid,rerank --heads 18.7,7.7,14.3,17.3,23.2,17.4,15.6,18.6 --rerank-first-stage 1 --pool-tokens 2048 --budgets 512,1024,2048 --per-question test-rerank.jsonl ; } > test-rerank.log 2>&1
