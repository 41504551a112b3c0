#!/usr/bin/env bash
# `s3mem ask` latency on this CPU (issue 20): the quickstart's reader (Qwen2.5-Coder-0.5B, free
# mode) over hybrid evidence of 1,024 tokens from the SmolLM2 index of the hp-dev haystacks,
# the first N dev questions, one process per question (model loads included) and the answer's
# own timings (retrieval, prefill, decoding) from --json.
# usage: ask-latency.sh DATA_DIR DATASET N [BIN] [READER]   (READER default qwen2.5-coder-0.5b)
set -u
D=$1; DS=$2; N=$3; B=${4:-target/release/s3mem}; READER=${5:-qwen2.5-coder-0.5b}
python3 -c "
import json,sys
for l in list(open('$DS'))[:$N]: print(json.loads(l)['input'])
" | while IFS= read -r q; do
  t0=$(date +%s.%N)
  out=$(S3MEM_LOG=warn $B ask --data-dir "$D" --collection eval --method hybrid --budget 1024 \
        --answer-model $READER --answer-mode free --max-new-tokens 32 --json "$q" 2>/dev/null)
  t1=$(date +%s.%N)
  echo "$out" | python3 -c "
import json,sys
r=json.loads(sys.stdin.read()); t=r.get('timings_ms',{})
print(json.dumps({'process_s': round($t1-$t0,2), 'answer': r.get('answer','')[:60], 'timings_ms': {k: round(v) for k,v in t.items()}}))"
done
