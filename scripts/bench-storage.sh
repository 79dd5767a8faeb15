#!/usr/bin/env bash
# What `make bench` runs for checkpoint storage (issue 11), in one run on
# one machine, so that every ratio compares figures taken side by side:
#
# 1. bench/storage: upload and download of a SIZE_MIB object to each
#    backend (dir, s3 on versitygw, jetstream on nats-server) against a
#    plain copy with a standard tool (cp + sync; minio-go's multipart
#    PutObject / GetObject; one nats.go object Put / Get), and each backend
#    encrypted against itself unencrypted.
# 2. Processes: `cedana client dump` and `client restore` of a process
#    holding SIZE_MIB of memory (half random, half text) to and from
#      local   a local directory (-d DIR: the archive is a file)
#      dir     file://DIR (the dir backend, unencrypted)
#      dir+enc the same with storage.encryption.key_file
#      s3      s3://bucket/prefix on versitygw (same machine)
#      s3+enc  the same, encrypted
#    interleaved run by run; medians and the ratios the issue's bars name:
#    encryption's cost on dump and restore (≤ 1.10×), restore from S3 against
#    restore from local disk (≤ 1.5×).
#
# Environment: SIZE_MIB (default 1024), RUNS (default 3), BENCH_DIR (default
# /var/tmp/cedana-storage-bench), SKIP_RAW=1 skips part 1.
# CONFIGS selects destinations of part 2 (default "local dir dir+enc s3 s3+enc";
# e.g. CONFIGS="dir dir+enc"). BINS="A B …" runs part 2 with several cedana
# binaries, interleaved run by run (each restores what it dumped), to tell a
# change from the noise of a shared machine; rows are then named CONFIG@BINARY
# and the ratios are given per binary. Every run line shows the load average.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CEDANA_BIN:-$PWD/bin/cedana}
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/cedana-storage-bench}
PY=$(command -v python3)
export PATH=/usr/local/go/bin:/usr/local/sbin:$PATH
. scripts/lib/versitygw.sh

[ -x "$VGW" ] || { echo "versitygw missing at $VGW: run scripts/setup-servers.sh" >&2; exit 1; }
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$BENCH_DIR"; }
trap cleanup EXIT

if [ "${SKIP_RAW:-0}" != 1 ]; then
  echo "## Storage backends: go run ./bench/storage -size $((SIZE_MIB << 20)) -runs $RUNS -dir $BENCH_DIR"
  go run ./bench/storage -size $((SIZE_MIB << 20)) -runs "$RUNS" -dir "$BENCH_DIR" \
    || echo "bench/storage failed (above); going on with the process figures"
  echo
fi

# --- processes ---
export HOME="$BENCH_DIR/home"
mkdir -p "$HOME" "$BENCH_DIR/local" "$BENCH_DIR/shared"
"$BIN" storage keygen "$BENCH_DIR/key" >/dev/null 2>&1
start_versitygw "$BENCH_DIR"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
start_hog() {
  local ready="$BENCH_DIR/ready.$RANDOM"
  setsid "$PY" bench/memhog.py "$ready" "$SIZE_MIB" </dev/null >/dev/null 2>&1 &
  HOG_PID=$!; pids+=("$HOG_PID")
  while [ ! -s "$ready" ]; do sleep 0.1; done
  rm -f "$ready"
}
wait_gone() {
  wait "$1" 2>/dev/null || true
  for _ in $(seq 500); do
    if ! awk '{print $1; print $5; print $6}' /proc/[0-9]*/stat 2>/dev/null | grep -qx "$1"; then return; fi
    sleep 0.02
  done
  echo "PID $1 still taken" >&2; exit 1
}

declare -A dump restore
configs=${CONFIGS:-local dir dir+enc s3 s3+enc}
bins=${BINS:-$BIN}
nbins=$(echo $bins | wc -w)
# key names a (config, binary) pair in the tables.
key() { if [ "$nbins" = 1 ]; then echo "$1"; else echo "$1@$(basename "$2")"; fi; }
loads=""
for run in $(seq "$RUNS"); do
  for c in $configs; do
   for bin in $bins; do
    k=$(key "$c" "$bin")
    keyenv=()
    case $c in
      local) dest="$BENCH_DIR/local" ;;
      dir|dir+enc) dest="file://$BENCH_DIR/shared" ;;
      s3|s3+enc) dest="s3://bench/run$run" ;;
      *) echo "unknown config $c" >&2; exit 2 ;;
    esac
    case $c in *+enc) keyenv=(CEDANA_STORAGE_ENCRYPTION_KEY_FILE="$BENCH_DIR/key") ;; esac
    start_hog; pid=$HOG_PID
    t0=$(now)
    loc=$(env "${keyenv[@]}" "$bin" client dump -p "$pid" -d "$dest" 2>"$BENCH_DIR/err") || { cat "$BENCH_DIR/err" >&2; exit 1; }
    t1=$(now); dump[$k]+=" $(elapsed "$t0" "$t1")"
    wait_gone "$pid"
    t0=$(now)
    rpid=$(env "${keyenv[@]}" "$bin" client restore "$loc" 2>"$BENCH_DIR/err") || { cat "$BENCH_DIR/err" >&2; exit 1; }
    t1=$(now); restore[$k]+=" $(elapsed "$t0" "$t1")"
    pids+=("$rpid"); kill -9 "$rpid"; wait_gone "$rpid"
    case $loc in s3://*) ;; *) rm -f "$loc" ;; esac
    rm -rf "$BENCH_DIR/s3data/bench/run$run"
    load=$(cut -d' ' -f1 /proc/loadavg); loads+=" $load"
    printf 'run %s %-16s dump %s s, restore %s s (load %s)\n' "$run" "$k" "$(echo "${dump[$k]}" | awk '{print $NF}')" "$(echo "${restore[$k]}" | awk '{print $NF}')" "$load"
   done
  done
done

echo
echo "## Processes: ${SIZE_MIB} MiB (half random, half text), median of $RUNS interleaved runs: SIZE_MIB=$SIZE_MIB RUNS=$RUNS CONFIGS=\"$configs\" scripts/bench-storage.sh"
echo "load average (1 min) after each run: min $(echo $loads | tr ' ' '\n' | sort -g | head -1), median $(echo $loads | median), max $(echo $loads | tr ' ' '\n' | sort -g | tail -1)"
echo
echo "| destination | dump | restore |"
echo "| --- | --- | --- |"
declare -A md mr
for c in $configs; do
  for bin in $bins; do
    k=$(key "$c" "$bin")
    md[$k]=$(echo "${dump[$k]}" | median); mr[$k]=$(echo "${restore[$k]}" | median)
    printf '| %s | %.2f s | %.2f s |\n' "$k" "${md[$k]}" "${mr[$k]}"
  done
done
# ratio NAME A B BAR: the ratio of the medians A/B (restore or dump
# tables), printed only when both configs ran.
ratio() {
  local name=$1 tab=$2 a=$3 b=$4 bar=$5 bin=$6
  local ka kb; ka=$(key "$a" "$bin"); kb=$(key "$b" "$bin")
  local -n t=$tab
  [ -n "${t[$ka]:-}" ] && [ -n "${t[$kb]:-}" ] || return 0
  local suffix=""; [ "$nbins" = 1 ] || suffix=" ($(basename "$bin"))"
  echo "| $name$suffix | $(awk -v x="${t[$ka]}" -v y="${t[$kb]}" 'BEGIN{printf "%.2f×", x/y}') | $bar |"
}
echo
echo "| ratio | value | bar |"
echo "| --- | --- | --- |"
for bin in $bins; do
  ratio "dump dir+enc / dir" md dir+enc dir "≤ 1.10×" "$bin"
  ratio "restore dir+enc / dir" mr dir+enc dir "≤ 1.10×" "$bin"
  ratio "dump s3+enc / s3" md s3+enc s3 "≤ 1.10×" "$bin"
  ratio "restore s3+enc / s3" mr s3+enc s3 "≤ 1.10×" "$bin"
  ratio "restore s3 / local" mr s3 local "≤ 1.5×" "$bin"
  ratio "dump s3 / local" md s3 local "—" "$bin"
  ratio "dump dir / local" md dir local "—" "$bin"
  ratio "restore dir / local" mr dir local "—" "$bin"
done
