#!/usr/bin/env bash
# PUT and GET through a six-node loopback cluster (one control process, six nodes of one drive
# each, shards moving between nodes over QUIC) against `ostore dev` with six drives, in one run on
# this machine, plus `osbench quic`. Usage: bench/cluster.sh [SECONDS per row, default 15]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
cargo build --release -q -p ostore-dataplane -p ostore-bench -p ostore-tools
B=target/release
work=$(mktemp -d /tmp/ostore-cluster-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
export OSTORE_SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n') OSTORE_LOG=warn
export OSTORE_CLUSTER_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n")

. bench/lib.sh
row() { # label endpoint workload size
  $B/osbench --endpoint "$2" --workload "$3" --size "$4" --concurrency 4 --duration "${secs}s" \
    --verify --json "$work/r.json" >/dev/null
  python3 - "$1" "$3" "$4" "$work/r.json" <<'PY'
import json, sys
label, wl, size, f = sys.argv[1:]
r = json.load(open(f))
op = r["ops"]["put" if wl == "put" else "get"]
print(f"| {label} | {size} | {wl.upper()} | {op['mb_s']:.1f} | {op['latency_ms']['p99']:.2f} | {op['errors']} |")
PY
}

$B/ostore dev --data "$work/dev" --http 127.0.0.1:0 --s3 127.0.0.1:0 > "$work/dev.out" 2>&1 &
pids+=($!)
dev=$(ready "$work/dev.out" | field http)
echo "| setup | size | op | MB/s | p99 ms | errors |"
echo "|---|---|---|---:|---:|---:|"
for size in 1MiB 64MiB; do
  row "dev, 6 drives" "http://$dev" put $size
  row "dev, 6 drives" "http://$dev" get $size
done
kill -9 "${pids[0]}"; pids=()

$B/ostore control --listen 127.0.0.1:0 --meta "redb:$work/control.redb" > "$work/c.out" 2>&1 &
pids+=($!)
control=$(ready "$work/c.out" | field control)
for i in 0 1 2 3 4 5; do
  OSTORE_JOIN_TOKEN=$($B/osctl nodes token --ttl 10m) \
  $B/ostore node --control "$control" --http 127.0.0.1:0 --peer 127.0.0.1:0 \
    --drive "$work/n$i" --cores 1 > "$work/n$i.out" 2>&1 &
  pids+=($!)
done
node0=$(ready "$work/n0.out" | field http)
for i in 1 2 3 4 5; do ready "$work/n$i.out" >/dev/null; done
sleep 2   # every node's view lists all six
for size in 1MiB 64MiB; do
  row "cluster, 6 nodes" "http://$node0" put $size
  row "cluster, 6 nodes" "http://$node0" get $size
done
echo
$B/osbench quic --bytes 1GiB --runs 3 2>/dev/null
