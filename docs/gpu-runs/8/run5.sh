#!/usr/bin/env bash
# Needle through the real CLI: one fact per 64k-token haystack (11 depths), each haystack
# ingested into its own data dir, then `s3mem ask --method hybrid` (budgets 512 and 64).
set -u; cd "$(dirname "$0")"
[ -x /tmp/s3mem ] && [ -f /tmp/m/smol.00 ] || { echo "part 1 is gone (fresh machine)"; exit 3; }
cat /tmp/m/smol.00 smol.01 > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf | tee $OUT/e.log
xz -dc needle64k-each.jsonl.xz > /tmp/n64.jsonl
python3 - <<'PY'
import json
for i, line in enumerate(open('/tmp/n64.jsonl')):
    d = json.loads(line)
    open(f'/tmp/hay-{i}.txt', 'w').write(d['context'])
    json.dump({'id': d['_id'], 'q': d['input'], 'answers': d['answers']}, open(f'/tmp/hay-{i}.json', 'w'))
PY
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
M="--models-dir /tmp/m --model /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda:0"
for i in $(seq 0 10); do
  q=$(python3 -c "import json;print(json.load(open('/tmp/hay-$i.json'))['q'])")
  $R ingest $M --data-dir /tmp/a64-$i --collection n --id haystack --json /tmp/hay-$i.txt > /tmp/ing-$i.json 2>>$OUT/e.log
  for b in 512 64; do
    t0=$(date +%s.%N)
    $R ask $M --data-dir /tmp/a64-$i --collection n --method hybrid --budget $b --max-new-tokens 32 --json "$q" > /tmp/ask-$i-$b.json 2>>$OUT/e.log
    echo "rc=$? $i $b $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s" >> $OUT/e.log
  done
done
python3 - <<'PY' | tee $OUT/needle-ask.md
import json, re
rows = []; ok = {512: 0, 64: 0}
print('| haystack | depth | tokens | code | hybrid@512 answer | ok | hybrid@64 answer | ok |')
print('|---|---:|---:|---|---|---|---|---|')
for i in range(11):
    meta = json.load(open(f'/tmp/hay-{i}.json'))
    ing = json.load(open(f'/tmp/ing-{i}.json'))
    ctx = open(f'/tmp/hay-{i}.txt').read()
    code = meta['answers'][0]
    depth = ctx.find(code) / len(ctx)
    cells = []
    for b in (512, 64):
        try:
            a = json.load(open(f'/tmp/ask-{i}-{b}.json'))
            ans = a['answer'].strip().replace('\n', ' ').replace('|', '/')
        except Exception as e:
            ans = f'(error {e})'
        good = code in ans
        ok[b] += good
        cells += [ans[:80], 'yes' if good else 'no']
    print(f"| {meta['id']} | {depth:.0%} | {ing['documents'][0]['tokens']} | {code} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
print(f"\ncorrect: hybrid@512 {ok[512]}/11, hybrid@64 {ok[64]}/11")
PY
cd /tmp && tar czf $OUT/e.tgz ask-*.json ing-*.json
