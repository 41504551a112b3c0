#!/usr/bin/env bash
# Snapshot of a 1M-token data dir and its restore, timed, then checked bit for bit.
#
#   docs/bench-runs/snapshot-bench.sh S3MEM DATA_DIR SCRATCH
#
# S3MEM: a release binary (cargo build --release: target/release/s3mem). DATA_DIR: a data dir
# no daemon holds; a 1M-token one is made once (a few minutes on 2 cores) with
#   s3mem bench retrieve --data-dir DATA_DIR --tokens 1000000 --runs 1 --embedder none
# SCRATCH: an empty folder on the same disk for the archive and the restored copy (removed
# and made again).
set -euo pipefail
s3mem=$1 data=$2 scratch=$3
rm -rf "$scratch"
mkdir -p "$scratch"
now() { date +%s.%N; }

"$s3mem" stats --data-dir "$data" | head -3
# Drop the page cache when allowed, so the copy reads the disk (root only; else warm).
sync
echo 3 2>/dev/null >/proc/sys/vm/drop_caches && echo "page cache dropped" || echo "page cache warm"

t0=$(now)
"$s3mem" snapshot create --data-dir "$data" "$scratch/snap.tar"
t1=$(now)
"$s3mem" snapshot restore "$scratch/snap.tar" "$scratch/restored"
t2=$(now)
ls -l "$scratch/snap.tar"
echo "create: $(echo "$t1 - $t0" | bc) s, restore: $(echo "$t2 - $t1" | bc) s"

# Bit for bit: the restored folder against the data dir itself (the process lock aside),
# before anything opens the copy (opening sled rewrites its own snapshot file).
diff -r --exclude=LOCK "$data" "$scratch/restored" && echo "restored copy identical to the data dir"
"$s3mem" verify --data-dir "$scratch/restored"

# The same over gRPC: a daemon on the data dir streams it (`snapshot create --server` also
# checks the received archive against its manifest, and that check is in the time).
"$s3mem" serve --data-dir "$data" --listen 127.0.0.1:0 --embedder none 2>"$scratch/serve.log" &
serve=$!
trap 'kill $serve 2>/dev/null' EXIT
until addr=$(grep -o 'listening on .*' "$scratch/serve.log" | cut -d' ' -f3) && [ -n "$addr" ]; do
  sleep 0.2
done
t3=$(now)
"$s3mem" snapshot create --server "http://$addr" "$scratch/served.tar"
t4=$(now)
echo "create over gRPC (streamed, then checked): $(echo "$t4 - $t3" | bc) s"
kill -TERM $serve
wait $serve || true
