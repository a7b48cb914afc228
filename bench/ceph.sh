#!/usr/bin/env bash
# A throwaway single-host Ceph 16.2 cluster with a RADOS Gateway, to benchmark an S3 server
# against on the same machine. Everything lives in one directory the caller gives: nothing goes
# to /etc/ceph or /var/lib/ceph, no systemd, no cephadm, no ceph-volume. Daemons run in the
# foreground (-f) as plain background processes of this script, their PIDs in DIR/pids.
#
# Layout: 1 mon, 1 mgr, 6 bluestore OSDs each on a sparse file (DIR/osdN/block), radosgw (beast)
# on 127.0.0.1:PORT. The S3 data pool default.rgw.buckets.data is erasure coded 4+2 with failure
# domain osd; the other rgw pools (index, meta, log, ...) are replicated size 3 (min_size 2),
# also with failure domain osd, so that one host suffices.
#
# Usage:
#   bench/ceph.sh install                      apt-get the Ceph packages (if radosgw is missing)
#   bench/ceph.sh up DIR PORT ACCESS SECRET    start a fresh cluster in DIR (new or empty) and
#                                              print `ceph ready rgw=127.0.0.1:PORT pids=...`
#   bench/ceph.sh down DIR                     stop the recorded daemons and remove DIR
#
# Knobs (environment): CEPH_MON_PORT (msgr2 port of the mon, default 3300), CEPH_OSD_SIZE
# (bytes of each sparse OSD file, default 12 GiB), CEPH_OSD_MEMORY (osd_memory_target, default
# 1.5 GiB), CEPH_MEDIA (ssd or hdd tuning for bluestore and the OSD op queues, default ssd:
# virtual disks often claim to be rotational).
set -euo pipefail

OSDS=6
MON_PORT=${CEPH_MON_PORT:-3300}
OSD_SIZE=${CEPH_OSD_SIZE:-$((12 << 30))}
OSD_MEMORY=${CEPH_OSD_MEMORY:-$((3 << 29))}
MEDIA=${CEPH_MEDIA:-ssd}
RGW=client.rgw.bench
# Marks a directory as ours, so that `down` never removes a directory `up` did not fill.
MARK=.ceph-bench

usage() { sed -n '/^# Usage:/,/^#$/s/^# \{0,1\}//p' "$0" >&2; exit 2; }
say() { echo "ceph.sh: $*" >&2; }

# --- the recorded daemons -------------------------------------------------------------------

# True if PID is a ceph daemon (live or zombie), not a PID the kernel has since reused.
ours() {
  case $(cat "/proc/$1/comm" 2>/dev/null) in ceph-* | radosgw) return 0 ;; esac
  return 1
}

# live_pids DIR [COMM...]: prints the recorded PIDs of ceph daemons that are still running (not
# zombies); only those whose command name is one of COMM, if given.
live_pids() {
  local dir=$1 pid comm state
  shift
  [ -f "$dir/pids" ] || return 0
  while read -r pid; do
    [ -n "$pid" ] && ours "$pid" || continue
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
    [ $# -eq 0 ] || [[ " $* " == *" $comm "* ]] || continue
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || continue
    [ "$state" = Z ] || echo "$pid"
  done <"$dir/pids"
}

# gone DIR COMM...: true once no such daemon is left, polling for up to 10 s.
gone() {
  local i
  for i in $(seq 100); do
    [ -n "$(live_pids "$@")" ] || return 0
    sleep 0.1
  done
  return 1
}

# Stops the recorded daemons: SIGTERM, and SIGKILL to those still there after 10 s. In three
# steps, as each takes seconds to give up on what the next provides: radosgw (waits for the
# OSDs), then OSDs and mgr (tell the mon they are leaving), then the mon. The daemons are not
# children of this invocation, so it polls /proc.
stop_all() {
  local dir=$1 step pids pid i left
  for step in radosgw "ceph-osd ceph-mgr" ceph-mon; do
    pids=$(live_pids "$dir" $step)
    [ -n "$pids" ] || continue
    kill -TERM $pids 2>/dev/null || true
    gone "$dir" $step && continue
    pids=$(live_pids "$dir" $step)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    gone "$dir" $step && continue
    say "could not stop: $(live_pids "$dir" $step | tr '\n' ' ')"
    return 1
  done
  # Dead daemons stay zombies until init reaps them; give it a moment, so that right after
  # `down` no ceph process shows up at all.
  for i in $(seq 30); do
    left=
    for pid in $(cat "$dir/pids"); do ours "$pid" && left=1; done
    [ -n "$left" ] || return 0
    sleep 0.1
  done
}

cmd_down() {
  local dir=$1
  [ -e "$dir" ] || return 0 # already down
  if [ ! -e "$dir/$MARK" ]; then
    say "$dir was not made by 'ceph.sh up'; not touching it"
    return 1
  fi
  stop_all "$dir"
  rm -rf "$dir"
}

cmd_install() {
  command -v radosgw >/dev/null && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y --no-install-recommends ceph-mon ceph-osd ceph-mgr radosgw ceph-common
}

# --- up -------------------------------------------------------------------------------------

# The ceph CLI against this cluster, as client.admin; fails instead of hanging if the mon is
# unreachable. Its chatter goes to the setup log.
c() { ceph -c "$CONF" --connect-timeout 30 "$@" 2>>"$DIR/log/setup.log"; }

# Runs `c LINE` for each line on stdin, all at once: the mon commits changes that come together
# in one go, where one after another each waits about a second for its own commit.
c_parallel() {
  local line pid pids=()
  while read -r line; do
    # shellcheck disable=SC2086 # a line is a command's words
    c $line >/dev/null &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}

# Starts a daemon in the foreground (-f) as a background process: stdin closed and stdout and
# stderr to a file, so that a caller reading our stdout sees EOF when we return.
NAMES=()
start() {
  local name=$1
  shift
  "$@" -f -c "$CONF" </dev/null >>"$DIR/log/$name.out" 2>&1 &
  echo $! >>"$DIR/pids"
  NAMES[$!]=$name
}

# Fails if a daemon we started has exited.
check_alive() {
  local pid live
  live=" $(live_pids "$DIR" | tr '\n' ' ') "
  for pid in "${!NAMES[@]}"; do
    case $live in *" $pid "*) ;; *)
      say "${NAMES[$pid]} (pid $pid) exited"
      return 1
      ;;
    esac
  done
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds, while the daemons live.
wait_for() {
  local what=$1 end=$((SECONDS + $2))
  shift 2
  until "$@"; do
    check_alive || return 1
    if [ "$SECONDS" -ge "$end" ]; then
      say "timed out waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# True once radosgw answers an HTTP request on PORT (bash's /dev/tcp: no curl needed).
rgw_answers() {
  local line
  (
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
    printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    read -r -t 2 line <&3 && [[ $line == HTTP/* ]]
  ) 2>/dev/null
}

# True when all OSDs are up and in and every PG of every pool is active+clean (the PG count must
# match the pools', as the mgr learns of new PGs with a delay).
all_clean() {
  local status pools
  status=$(c status -f json) && pools=$(c osd pool ls detail -f json) || return 1
  /usr/bin/python3 - "$status" "$pools" "$OSDS" <<'PY'
import json, sys
s, pools, want = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
o = s["osdmap"].get("osdmap", s["osdmap"])  # nested before Pacific
pg = s["pgmap"]
clean = sum(x["count"] for x in pg.get("pgs_by_state", []) if x["state_name"] == "active+clean")
ok = (o["num_up_osds"] == want and o["num_in_osds"] == want
      and pg["num_pgs"] == sum(p["pg_num"] for p in pools) and clean == pg["num_pgs"])
sys.exit(0 if ok else 1)
PY
}
health_ok() { [ "$(c health)" = HEALTH_OK ]; }

# On a failed `up`: the tail of the setup log and of the logs of daemons that died, then stop the
# daemons. DIR stays for a post-mortem; `down DIR` removes it.
up_failed() {
  local rc=$? pid live name
  trap - EXIT
  [ "$rc" -ne 0 ] || return 0
  live=" $(live_pids "$DIR" | tr '\n' ' ') "
  {
    echo "ceph.sh: up failed (exit $rc); logs in $DIR/log"
    [ -s "$DIR/log/setup.log" ] && { echo "--- setup.log"; tail -n 20 "$DIR/log/setup.log"; }
    for pid in "${!NAMES[@]}"; do
      case $live in *" $pid "*) continue ;; esac
      name=${NAMES[$pid]}
      echo "--- $name.out"
      tail -n 10 "$DIR/log/$name.out" 2>/dev/null
      echo "--- $name.log"
      tail -n 30 "$DIR/log/$name.log" 2>/dev/null
    done
  } >&2 || true
  stop_all "$DIR" || true
  exit "$rc"
}

cmd_up() {
  DIR=$1 PORT=$2
  local access=$3 secret=$4 i p fsid uuid shards threads
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  if [ -n "$(ls -A "$DIR")" ]; then
    say "$DIR is not empty"
    exit 1
  fi
  CONF=$DIR/ceph.conf
  touch "$DIR/$MARK" "$DIR/pids"
  mkdir -p "$DIR/keys" "$DIR/log" "$DIR/run" "$DIR/crash" "$DIR/mon.a" "$DIR/mgr.x" "$DIR/rgw"
  trap up_failed EXIT
  trap 'exit 130' INT TERM
  for p in "$MON_PORT" "$PORT"; do
    port_free "$p" || { say "port $p on 127.0.0.1 is in use"; exit 1; }
  done
  # Daemons such as ceph-osd want many descriptors; take what the hard limit allows.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

  case $MEDIA in
  ssd) shards=8 threads=2 ;;
  hdd) shards=5 threads=1 ;;
  *) say "CEPH_MEDIA must be ssd or hdd"; exit 1 ;;
  esac
  fsid=$(cat /proc/sys/kernel/random/uuid)
  # $name, $id and $cluster are expanded by Ceph, not by the shell.
  cat >"$CONF" <<EOF
[global]
fsid = $fsid
# One mon, msgr2 only, on loopback.
mon_host = [v2:127.0.0.1:$MON_PORT]
public_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = $DIR/keys/\$name.keyring
run_dir = $DIR/run
pid_file = $DIR/run/\$name.pid
crash_dir = $DIR/crash
# One host: replicas and EC chunks go to distinct OSDs, not hosts (the initial CRUSH rule is
# built from this when the mon store is created).
osd_crush_chooseleaf_type = 0
osd_pool_default_size = 3
osd_pool_default_min_size = 2
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
# No PG splits or merges in the middle of a benchmark: the pools get fixed PG counts.
osd_pool_default_pg_autoscale_mode = off
# Allowed and quiet, should someone set a pool to size 1.
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
# The host's disk is shared with the benchmark; only warn when it is really full.
mon_data_avail_warn = 2
mon_data_avail_crit = 1

[mon]
mon_data = $DIR/\$name
keyring = $DIR/\$name/keyring
log_file = $DIR/log/\$name.log
mon_cluster_log_file = $DIR/log/\$cluster.\$channel.log

[mgr]
mgr_data = $DIR/\$name
log_file = $DIR/log/\$name.log

[osd]
osd_data = $DIR/osd\$id
osd_journal = $DIR/osd\$id/journal
osd_objectstore = bluestore
# A sparse file per OSD, osd_data/block, created by ceph-osd --mkfs (bluestore_block_path stays
# unset: when set, mkfs makes osd_data/block a symlink to it).
bluestore_block_create = true
bluestore_block_size = $OSD_SIZE
osd_memory_target = $OSD_MEMORY
# Bluestore and the OSD op queues pick HDD or SSD tuning from the device's rotational flag;
# decide it here instead of trusting what a virtual disk claims.
bluestore_debug_enforce_settings = $MEDIA
osd_op_num_shards = $shards
osd_op_num_threads_per_shard = $threads
log_file = $DIR/log/\$name.log

[$RGW]
rgw_frontends = beast endpoint=127.0.0.1:$PORT
rgw_data = $DIR/rgw
log_file = $DIR/log/\$name.log
EOF

  # Keys for everyone, made up front and handed to the mon when its store is created, so that no
  # daemon needs an `auth get-or-create` round trip.
  say "creating mon store and keys"
  key() { # key NAME CAPS...: writes DIR/keys/NAME.keyring
    local name=$1
    shift
    ceph-authtool --create-keyring "$DIR/keys/$name.keyring" --gen-key -n "$name" "$@"
    ceph-authtool "$DIR/keys/initial.keyring" --import-keyring "$DIR/keys/$name.keyring"
  } >/dev/null
  ceph-authtool --create-keyring "$DIR/keys/initial.keyring" --gen-key -n mon. --cap mon 'allow *' \
    >/dev/null
  key client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
  key mgr.x --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *'
  key $RGW --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw'
  for i in $(seq 0 $((OSDS - 1))); do
    key "osd.$i" --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *'
  done
  monmaptool --create --enable-all-features --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT]" \
    "$DIR/monmap" >>"$DIR/log/setup.log" 2>&1
  ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap" --keyring "$DIR/keys/initial.keyring" \
    >>"$DIR/log/setup.log" 2>&1

  say "starting mon, mgr; making $OSDS OSDs"
  start mon.a ceph-mon -i a
  start mgr.x ceph-mgr -i x
  # Bluestore mkfs needs only the monmap and the fsid, not the mon: do all of them at once.
  local mkfs=()
  for i in $(seq 0 $((OSDS - 1))); do
    mkdir -p "$DIR/osd$i"
    uuid=$(cat /proc/sys/kernel/random/uuid)
    echo "$uuid" >"$DIR/osd$i/uuid"
    ceph-osd -c "$CONF" -i "$i" --mkfs --osd-uuid "$uuid" --monmap "$DIR/monmap" \
      >"$DIR/log/osd.$i.mkfs" 2>&1 &
    mkfs+=($!)
  done
  for i in $(seq 0 $((OSDS - 1))); do
    wait "${mkfs[$i]}" || { say "mkfs of osd.$i failed"; cat "$DIR/log/osd.$i.mkfs" >&2; exit 1; }
  done

  # Register each OSD under its id (its key is already known to the mon) and start it; the OSD
  # places itself in CRUSH under this host when it boots.
  wait_for "the mon" 60 c mon stat >/dev/null
  for i in $(seq 0 $((OSDS - 1))); do
    c osd new "$(cat "$DIR/osd$i/uuid")" "$i" >/dev/null
    start "osd.$i" ceph-osd -i "$i"
  done

  say "creating pools"
  # The S3 data pool: erasure coded 4+2, chunks on distinct OSDs. It and the other rgw pools
  # are made before radosgw starts, so that radosgw uses them as they are and no pool (such as
  # the bucket index, otherwise made on the first PUT) is created during a benchmark.
  c osd erasure-code-profile set bench-k4m2 k=4 m=2 crush-failure-domain=osd
  local pools=".rgw.root default.rgw.control default.rgw.meta default.rgw.log
    default.rgw.buckets.index default.rgw.buckets.non-ec default.rgw.buckets.data"
  {
    for p in $pools; do
      case $p in
      *.data) echo "osd pool create $p 32 32 erasure bench-k4m2" ;;
      *.index) echo "osd pool create $p 32 32 replicated" ;;
      *) echo "osd pool create $p 8 8 replicated" ;;
      esac
    done
    # Nothing in the background during a benchmark: no SMART scraping of (file) devices.
    echo "config set mgr mgr/devicehealth/enable_monitoring false"
  } | c_parallel
  for p in $pools; do echo "osd pool application enable $p rgw"; done | c_parallel

  # radosgw-admin waits for the new PGs to be active (it writes to .rgw.root and the meta pool);
  # for 5 minutes at most.
  say "starting radosgw"
  timeout 300 radosgw-admin -c "$CONF" user create --uid bench --display-name bench \
    --access-key "$access" --secret "$secret" 2>>"$DIR/log/setup.log" >/dev/null
  start $RGW radosgw -n $RGW
  wait_for "radosgw on port $PORT" 120 rgw_answers

  # Then every PG (the mgr learns of them with some delay) must be active+clean, and warnings
  # get a moment to clear.
  say "waiting for clean PGs"
  wait_for "$OSDS OSDs up and all PGs active+clean" 300 all_clean
  # Nor a balancer moving PGs (and their data) around; this needs the mgr, active by now.
  c balancer off
  if ! wait_for "HEALTH_OK" 30 health_ok 2>/dev/null; then
    say "cluster is not HEALTH_OK (PGs are all active+clean):"
    c health detail >&2 || true
  fi
  trap - EXIT INT TERM
  echo "ceph ready rgw=127.0.0.1:$PORT pids=$(paste -sd, "$DIR/pids")"
}

case ${1:-} in
install) [ $# -eq 1 ] || usage; cmd_install ;;
up) [ $# -eq 5 ] || usage; cmd_up "$2" "$3" "$4" "$5" ;;
down) [ $# -eq 2 ] || usage; cmd_down "$2" ;;
*) usage ;;
esac
