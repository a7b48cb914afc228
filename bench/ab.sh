#!/usr/bin/env bash
# Before/after ratios for a change to the server: runs the same osbench rows against two
# `ostore` binaries, alternating A B A B ... so that drift on a shared machine falls on both,
# and prints each row's throughput and p99 per binary and the ratio B/A of the medians.
# Usage: bench/ab.sh OSTORE_A OSTORE_B [rounds, default 2] [seconds per row, default 6]
# Rows: ROWS="size:workload:concurrency:objects[:rate] ..." (default: 4 KiB, 1 MiB and 64 MiB
# PUT/GET, closed loop); a rate makes the row open loop at that many operations per second.
# A_ARGS / B_ARGS: further `ostore dev` arguments for one side (e.g. A_ARGS="--stripe-cache 0"
# with the same binary on both sides compares a setting in one run).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 ROUNDS=${3:-2} SECS=${4:-6} PROTOCOL=${PROTOCOL:-http}
ROWS=${ROWS:-"4KiB:put:64:1000 4KiB:get:64:1000 1MiB:put:16:200 1MiB:get:16:200 64MiB:put:4:16 64MiB:get:4:16"}
cargo build --release -p ostore-bench >/dev/null
T=$(mktemp -d "${TMPDIR:-/tmp}/ostore-ab.XXXXXX")
PID=
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
. bench/lib.sh
for r in $(seq "$ROUNDS"); do
  for which in A B; do
    bin=$A args=${A_ARGS:-}
    [ "$which" = B ] && bin=$B args=${B_ARGS:-}
    # shellcheck disable=SC2086  # the arguments are words
    start_dev "$bin" $args
    for row in $ROWS; do
      IFS=: read -r size op conc objects rate <<<"$row"
      extra=()
      [ -n "$rate" ] && extra=(--rate "$rate")
      target/release/osbench --endpoint "http://$HTTP" --workload "$op" --size "$size" \
        --concurrency "$conc" --objects "$objects" --duration "${SECS}s" --verify \
        --prefix "ab-$size-$op" --progress false --json "$T/$which-$r-$row.json" "${extra[@]}" \
        --protocol "$PROTOCOL" --tls-ca "$T/data/tls/cert.pem" >/dev/null
    done
    stop_dev
  done
done
python3 - "$T" "$ROUNDS" "$ROWS" <<'PY'
import json, sys, statistics
t, rounds, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
print(f"| row | A MB/s | B MB/s | B/A | A p99 ms | B p99 ms | B/A p99 | A p99 each round | B p99 each round |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
for row in rows:
    size, op = row.split(":")[:2]
    label = f"{size} {op}" + (f" at {row.split(':')[4]}/s" if len(row.split(":")) > 4 else "")
    res = {}
    for w in "AB":
        runs = [json.load(open(f"{t}/{w}-{r}-{row}.json")) for r in range(1, rounds + 1)]
        ops = [x["ops"][op] for x in runs]
        assert all(o["errors"] == 0 for o in ops), f"{w} {row}: errors"
        res[w] = (statistics.median(o["mb_s"] for o in ops), statistics.median(o["latency_ms"]["p99"] for o in ops),
                  " ".join(f"{o['latency_ms']['p99']:.1f}" for o in ops))
    (am, ap, ar), (bm, bp, br) = res["A"], res["B"]
    print(f"| {label} | {am:.1f} | {bm:.1f} | {bm/am:.2f} | {ap:.2f} | {bp:.2f} | {bp/ap:.2f} | {ar} | {br} |")
PY
