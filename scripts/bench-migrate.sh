#!/usr/bin/env bash
# Benchmarks `cedana migrate` (stop-and-copy) between two daemons on this
# machine — node a with an embedded NATS server, node b joined to it —
# against raw CRIU by hand in the same run: `criu dump` + `cp -r` +
# `criu restore` of the same kind of process.
#
# The job is a Python process holding MIB MiB of random memory that prints
# a timestamp every 10 ms; its downtime is the longest gap in its own
# output around the migration. Prints a markdown table; progress to stderr.
# Needs root, CRIU and python3 (`make setup`). Takes about a minute per run.
#
# Environment: CEDANA_BIN (default: built here), MIB (default 256), RUNS
# (default 3), BENCH_DIR (default: a temporary directory, removed at the
# end), TRANSFER (stream or object-store; default stream), LAZY (1:
# `migrate --lazy`, post-copy; the table then has the time until all the
# memory arrived instead of the raw CRIU columns, since its bar is the
# downtime, flat as MIB grows).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-migrate: needs root (CRIU does)" >&2; exit 5; }
command -v criu >/dev/null || { echo "bench-migrate: criu not on PATH: run make setup" >&2; exit 5; }
command -v python3 >/dev/null || { echo "bench-migrate: python3 not on PATH" >&2; exit 5; }

MIB=${MIB:-256}
RUNS=${RUNS:-3}
TRANSFER=${TRANSFER:-stream}
LAZY=${LAZY:-}
MIGRATE_FLAGS=()
[ -n "$LAZY" ] && MIGRATE_FLAGS=(--lazy)
DIR=${BENCH_DIR:-$(mktemp -d /var/tmp/cedana-bench-migrate.XXXXXX)}
mkdir -p "$DIR"
BIN=${CEDANA_BIN:-}
if [ -z "$BIN" ]; then
  BIN=$DIR/cedana
  go build -trimpath -o "$BIN" ./cmd/cedana
fi
PIDS=()
RAWP=
cleanup() {
  if [ -n "$RAWP" ]; then kill -KILL "$RAWP" 2>/dev/null || true; fi
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [ -n "${BENCH_DIR:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT

JOB=$(cat <<EOF
import os, sys, time
m = bytearray(os.urandom($MIB << 20))
print("ready", flush=True)
while True:
    print(time.time(), flush=True)
    time.sleep(0.01)
EOF
)

# The same process for raw CRIU, which says it is ready in a file of its
# own: an output file that grows after the dump would fail the restore.
RAWJOB=$(cat <<EOF
import os, sys, time
m = bytearray(os.urandom($MIB << 20))
open(sys.argv[1], "w").write("ready\n")
while True:
    time.sleep(0.01)
EOF
)

# gap FILE: the longest gap, in ms, between consecutive timestamps after
# "ready" in a job's output.
gap() {
  python3 - "$1" <<'EOF'
import sys
ts, on = [], False
for line in open(sys.argv[1]):
    line = line.strip()
    if line == "ready":
        on = True
        continue
    if on:
        try: ts.append(float(line))
        except ValueError: pass
print(round(max(b - a for a, b in zip(ts, ts[1:])) * 1000))
EOF
}

waitready() { # FILE
  for _ in $(seq 600); do grep -qx ready "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-migrate: the job never became ready ($1)" >&2; exit 1
}

ms() { python3 -c 'import time; print(int(time.time()*1000))'; }

# The cluster: two daemons, each with its own HOME, socket and state.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$TOKEN" > "$DIR/token"
for n in a b; do mkdir -p "$DIR/$n/.cedana"; done
cat > "$DIR/a/.cedana/cedana_config.json" <<EOF
{"daemon":{"socket":"$DIR/a/s","state_dir":"$DIR/a/state","metrics_addr":""},
 "cluster":{"node":"a","nats_listen":"127.0.0.1:$PORT","nats_token_file":"$DIR/token","transfer":"$TRANSFER"}}
EOF
cat > "$DIR/b/.cedana/cedana_config.json" <<EOF
{"daemon":{"socket":"$DIR/b/s","state_dir":"$DIR/b/state","metrics_addr":""},
 "cluster":{"node":"b","nats_urls":"nats://$TOKEN@127.0.0.1:$PORT","transfer":"$TRANSFER"}}
EOF
HOME=$DIR/a setsid "$BIN" daemon start 2>"$DIR/a.log" & PIDS+=($!)
for _ in $(seq 100); do HOME=$DIR/a "$BIN" daemon status >/dev/null 2>&1 && break; sleep 0.1; done
HOME=$DIR/b setsid "$BIN" daemon start 2>"$DIR/b.log" & PIDS+=($!)
for _ in $(seq 100); do HOME=$DIR/b "$BIN" daemon status >/dev/null 2>&1 && break; sleep 0.1; done

if [ -n "$LAZY" ]; then
  echo "| run | RSS | cedana migrate --lazy total | downtime (job's output) | downtime (reported) | memory all arrived after | archive |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
else
  echo "| run | cedana migrate total | downtime (job's output) | downtime (reported) | archive | raw dump | raw cp | raw restore | raw total | cedana / raw |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
fi
for run in $(seq "$RUNS"); do
  echo "run $run: cedana migrate of a $MIB MiB job" >&2
  HOME=$DIR/a "$BIN" run --name "m$run" --pid-namespace -- python3 -c "$JOB" >/dev/null
  LOG=$(HOME=$DIR/a "$BIN" ps -o json | python3 -c "import json,sys; print([j for j in json.load(sys.stdin) if j['name']=='m$run'][0]['log_path'])")
  waitready "$LOG"
  sleep 1
  OUT=$(HOME=$DIR/a "$BIN" migrate "m$run" --to b "${MIGRATE_FLAGS[@]}" -o json)
  sleep 1
  HOME=$DIR/b "$BIN" kill "m$run" >/dev/null
  HOME=$DIR/b "$BIN" rm "m$run" >/dev/null 2>&1 || true
  TOTAL=$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_ms"])')
  REPORTED=$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["downtime_ms"])')
  BYTES=$(echo "$OUT" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["bytes"])>>20)')
  DOWN=$(gap "$LOG")
  if [ -n "$LAZY" ]; then
    KB=$(echo "$OUT" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["bytes"])>>10)')
    MEM=$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("memory_ms", "?"))')
    echo "| $run | $MIB MiB | ${TOTAL} ms | ${DOWN} ms | ${REPORTED} ms | ${MEM} ms | ${KB} KiB |"
    continue
  fi

  echo "run $run: raw criu dump + cp + restore" >&2
  RAW=$DIR/raw$run
  mkdir -p "$RAW/d1"
  setsid unshare -pf setsid python3 -c "$RAWJOB" "$RAW/ready" >/dev/null 2>&1 < /dev/null &
  USH=$!
  PIDS+=("$USH")
  waitready "$RAW/ready"
  P=$(pgrep -P "$USH" | head -1)
  RAWP=$P # until the dump ends it
  sleep 1
  t0=$(ms); criu dump -t "$P" -D "$RAW/d1" -o dump.log >/dev/null 2>&1 || { echo "raw dump failed: $RAW/d1/dump.log" >&2; exit 1; }
  RAWP=
  t1=$(ms); cp -r "$RAW/d1" "$RAW/d2"
  t2=$(ms); criu restore -d -D "$RAW/d2" -o restore.log --pidfile "$RAW/pid" >/dev/null 2>&1 || { echo "raw restore failed: $RAW/d2/restore.log" >&2; exit 1; }
  t3=$(ms)
  kill -KILL "$(cat "$RAW/pid")" 2>/dev/null || true
  wait "$USH" 2>/dev/null || true
  rm -rf "$RAW"
  RAWT=$((t3 - t0))
  RATIO=$(python3 -c "print(f'{$TOTAL/$RAWT:.2f}')")
  echo "| $run | ${TOTAL} ms | ${DOWN} ms | ${REPORTED} ms | ${BYTES} MiB | $((t1 - t0)) ms | $((t2 - t1)) ms | $((t3 - t2)) ms | ${RAWT} ms | $RATIO |"
done
