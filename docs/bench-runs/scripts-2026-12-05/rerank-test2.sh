#!/bin/bash
# Held-out re-ranking, questions 101-200 of hp-test (the same configuration as rerank-test.sh).
cd /work/runs/s2
export S3MEM_THREADS=2
{ time /work/bin/s3mem-c eval recall --data-dir /work/dd-test --collection eval --dataset /work/data/hp-test-rest.jsonl --limit 100 --methods bm25,rag,hybrid,rerank --heads 18.7,7.7,14.3,17.3,23.2,17.4,15.6,18.6 --rerank-first-stage 1 --pool-tokens 2048 --budgets 512,1024,2048 --per-question test-rerank2.jsonl ; } > test-rerank2.log 2>&1
