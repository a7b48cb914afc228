#!/usr/bin/env bash
# How fast a loopback cluster rebuilds a lost node, against what its drives can do.
# One control process (--down-grace 1s) and seven nodes of one drive and one core each; objects
# written with osbench; the repair rate lifted (`osctl repair-rate unlimited`); node 6 killed;
# the rebuild timed from the first queued repair to an empty queue, as `osctl status` reports
# it. The drives of all nodes are directories on one disk, so the survivors' aggregate drive
# bandwidth is that disk's, measured here with O_DIRECT dd.
# Usage: bench/rebuild.sh [SECONDS of writes, default 20] [OBJECT SIZE, default 4MiB]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
size=${2:-4MiB}
cargo build --release -q -p ostore-dataplane -p ostore-tools -p ostore-bench
B=target/release
work=$(mktemp -d "${TMPDIR:-/tmp}/ostore-rebuild-bench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
export OSTORE_SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n') OSTORE_LOG=warn
export OSTORE_CLUSTER_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n")

. bench/lib.sh
now() { date +%s.%N; }
cpu() { head -1 /proc/stat; } # user nice system idle iowait irq softirq steal

# The disk under the drives: sequential O_DIRECT write, then read, 1 MiB blocks.
dd if=/dev/urandom of="$work/dd.src" bs=1M count=512 status=none
w=$( { dd if="$work/dd.src" of="$work/dd" bs=1M oflag=direct conv=fdatasync 2>&1; } | sed -n 's/.*, \([0-9.]*\) \([MG]\)B\/s$/\1 \2/p')
r=$( { dd if="$work/dd" of=/dev/null bs=1M iflag=direct 2>&1; } | sed -n 's/.*, \([0-9.]*\) \([MG]\)B\/s$/\1 \2/p')
rm -f "$work/dd" "$work/dd.src"
mbs() { awk -v v="$1" -v u="$2" 'BEGIN { printf "%.0f", (u == "G" ? v * 1000 : v) }'; }
disk_w=$(mbs $w); disk_r=$(mbs $r)

$B/ostore control --listen 127.0.0.1:0 --meta "redb:$work/control.redb" --down-grace 1s \
  > "$work/c.out" 2>&1 &
pids+=($!)
control=$(ready "$work/c.out" | field control)
for i in 0 1 2 3 4 5 6; do
  OSTORE_JOIN_TOKEN=$($B/osctl nodes token --ttl 10m) \
  $B/ostore node --control "$control" --http 127.0.0.1:0 --peer 127.0.0.1:0 \
    --drive "$work/n$i" --cores 1 > "$work/n$i.out" 2>&1 &
  pids+=($!)
done
node0=$(ready "$work/n0.out" | field http)
for i in 1 2 3 4 5 6; do ready "$work/n$i.out" >/dev/null; done
sleep 2   # every node's view lists all seven
$B/osbench --endpoint "http://$node0" --workload put --size "$size" --concurrency 4 \
  --duration "${secs}s" --json "$work/put.json" >/dev/null
osctl() { $B/osctl --endpoint "http://$node0" "$@"; }
osctl repair-rate unlimited >/dev/null
sleep 2
lost=$(du -sb "$work/n6/shards" | cut -f1)
kill -9 "${pids[7]}"
t_kill=$(now)
t_start=""
max_rate=0
while :; do
  st=$(osctl --json status)
  togo=$(python3 -c 'import json,sys; r=json.load(sys.stdin)["repair"]; print(r["bytes_to_go"])' <<<"$st")
  rate=$(python3 -c 'import json,sys; r=json.load(sys.stdin)["repair"]; print(r["bytes_per_s"])' <<<"$st")
  [ "$rate" -gt "$max_rate" ] && max_rate=$rate
  if [ -z "$t_start" ] && [ "$togo" -gt 0 ]; then t_start=$(now); cpu0=$(cpu); fi
  if [ -n "$t_start" ] && [ "$togo" -eq 0 ]; then t_end=$(now); cpu1=$(cpu); break; fi
  if awk -v a="$(now)" -v b="$t_kill" 'BEGIN { exit !(a - b > 900) }'; then
    echo "rebuild did not end within 15 minutes" >&2; exit 1
  fi
  sleep 0.5
done
python3 - "$lost" "$t_kill" "$t_start" "$t_end" "$disk_w" "$disk_r" "$max_rate" "$cpu0" "$cpu1" <<'PY'
import sys
lost, t_kill, t_start, t_end, dw, dr, peak, cpu0, cpu1 = sys.argv[1:]
c0 = [int(x) for x in cpu0.split()[1:]]
c1 = [int(x) for x in cpu1.split()[1:]]
d = [b - a for a, b in zip(c0, c1)]
busy = 1 - (d[3] + d[4]) / max(1, sum(d))
iowait = d[4] / max(1, sum(d))
lost = int(lost); dw = float(dw); dr = float(dr); peak = int(peak)
t_kill, t_start, t_end = float(t_kill), float(t_start), float(t_end)
dt = t_end - t_start
k, n = 4, 6  # 4+2: each rebuilt shard reads the 5 surviving shards (all are verified) and writes 1
rebuilt = lost / dt / 1e6
disk = rebuilt * (n - 1 + 1) # bytes the drives move per rebuilt byte: 5 read + 1 written
print(f"| lost node's shard bytes | {lost / 1e6:.0f} MB |")
print(f"| kill to first queued repair | {t_start - t_kill:.1f} s (detection + 1 s grace) |")
print(f"| rebuild (first queued to queue empty) | {dt:.1f} s |")
print(f"| rebuilt shard bytes/s | {rebuilt:.1f} MB/s |")
print(f"| drive bytes/s it moved (5 read + 1 written per rebuilt byte) | {disk:.1f} MB/s |")
print(f"| the one disk under all drives: O_DIRECT write / read | {dw:.0f} / {dr:.0f} MB/s |")
print(f"| drive traffic / disk read bandwidth | {disk / dr:.2f} |")
print(f"| peak rate `osctl status` reported (reads, all nodes) | {peak / 1e6:.1f} MB/s |")
print(f"| CPU busy during the rebuild (all cores; iowait) | {busy * 100:.0f} % ({iowait * 100:.0f} %) |")
PY
