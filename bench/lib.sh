# Sourced by the bench scripts. Needs $T (a scratch directory the caller removes).

# Starts `ostore dev` from binary $1 (further arguments are passed on) on a fresh $T/data, on
# free ports; sets PID, HTTP (host:port) and OSTORE_SECRET (exported).
start_dev() {
  local bin=$1
  shift
  rm -rf "$T/data"
  unset OSTORE_SECRET
  "$bin" dev --data "$T/data" --http 127.0.0.1:0 --s3 127.0.0.1:0 "$@" >"$T/out" 2>"$T/err" &
  PID=$!
  for _ in $(seq 600); do grep -q '^ostore ready' "$T/out" && break; sleep 0.1; done
  grep -q '^ostore ready' "$T/out" || { cat "$T/err" >&2; exit 1; }
  HTTP=$(sed -n 's/^ostore ready.* http=\([^ ]*\).*/\1/p' "$T/out")
  export OSTORE_SECRET
  OSTORE_SECRET=$(cat "$T/data/root.secret")
}

# Stops the server start_dev started (SIGTERM, and waits).
stop_dev() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }

# A loopback cluster's processes: `ready FILE` waits for the ready line a process printed to
# FILE and prints it; `field NAME` takes NAME=VALUE out of a ready line on stdin.
ready() {
  for _ in $(seq 1 600); do grep -m1 '^ostore ready' "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no ready line in $1" >&2; exit 1
}
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
