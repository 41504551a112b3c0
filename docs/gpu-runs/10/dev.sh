#!/usr/bin/env bash
# Call 9 (Qwen2.5-Coder-0.5B on the H200): join the GGUF from the parts staged by calls 1-8,
# then choose the answer instruction on the dev set (26 HotpotQA questions, questions
# 2000+ of the file, none in the test sets): the variant with the highest full-context F1
# (the baseline's score, so the choice cannot favour retrieval). Its text goes to
# /tmp/instruction.txt for fit.sh and long.sh.
set -u; cd "$(dirname "$0")"
[ -x /tmp/s3mem ] && [ "$(ls /tmp/q | wc -l)" = 8 ] || { echo "staged parts missing: $(ls /tmp/q 2>&1)"; exit 3; }
cp part.8 /tmp/q/ && mkdir -p /tmp/m && cat /tmp/q/part.0 /tmp/q/part.1 /tmp/q/part.2 /tmp/q/part.3 /tmp/q/part.4 /tmp/q/part.5 /tmp/q/part.6 /tmp/q/part.7 /tmp/q/part.8 > /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf && rm -rf /tmp/q
sha256sum /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf | tee $OUT/q.log
for f in hpq-fit hpq-long hp-dev; do xz -dc $f.jsonl.xz > /tmp/$f.jsonl; done
cp -r sae-qwen fit.sh long.sh /tmp/
export S3MEM_LOG=warn
R="bash /tmp/run-on-gpu.sh /tmp/s3mem"
M="--models-dir /tmp/m --model /tmp/m/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf --sae /tmp/sae-qwen --device cuda:0"
V0="Answer with the answer only, in a few words."
V1="Only give me the answer and do not output any other words."
V2="Answer with a short phrase (a name, a date, a number, or yes/no), not a sentence."
i=0
for v in "$V0" "$V1" "$V2"; do
  t0=$(date +%s)
  timeout 150 $R eval $M --data-dir /tmp/qd --out /tmp/dev-$i --methods full,hybrid,closed-book --budgets 1024 --instruction "$v" /tmp/hp-dev.jsonl > /tmp/out-dev-$i.txt 2>>$OUT/q.log
  echo "=== dev $i rc=$? $(( $(date +%s)-t0 )) s: $v" | tee -a $OUT/q.log; grep '^|' /tmp/out-dev-$i.txt | tee -a $OUT/q.log
  i=$((i+1))
done
python3 - <<'PY' | tee -a $OUT/q.log
import json
best = None
for i in range(3):
    try:
        r = json.load(open(f"/tmp/dev-{i}/report.json"))
    except Exception as e:
        print(f"dev {i}: no report ({e})"); continue
    full = [x for x in r["rows"] if x["method"] == "full"]
    if not r.get("complete") or not full:
        print(f"dev {i}: incomplete"); continue
    f1 = full[0]["f1"]
    print(f"dev {i}: full F1 {100*f1:.1f}  instruction {r['instruction']!r}")
    if best is None or f1 > best[0]:
        best = (f1, r["instruction"])
text = best[1] if best else "Answer with the answer only, in a few words."
open("/tmp/instruction.txt", "w").write(text)
print("chosen:", repr(text))
PY
cd /tmp && tar czf $OUT/dev.tgz out-dev-*.txt dev-*/report.json dev-*/report.md instruction.txt
