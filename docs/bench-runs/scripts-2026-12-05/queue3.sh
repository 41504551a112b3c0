#!/bin/bash
# After queue2: question latency against collection size for the baselines and the default.
while pgrep -f queue2.sh >/dev/null; do sleep 10; done
B=/work/bin/s3mem-b
cd /work/runs/s2
export S3MEM_THREADS=2
for m in bm25 dense rag hybrid; do
  nice -n 3 $B bench retrieve --data-dir /work/bench-dir --method $m --tokens 10000,100000,1000000 --runs 20 > bench-$m.txt 2>bench-$m.err
done
