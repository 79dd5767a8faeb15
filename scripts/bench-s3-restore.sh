#!/usr/bin/env bash
# Restore-only A/B of issue 11's "encryption adds ≤ 10 % to restore" on S3:
# one process holding SIZE_MIB (half random, half text) is dumped once to
# s3:// and once to s3:// encrypted (versitygw on this machine), then each
# archive is restored ROUNDS times by each binary of BINS, alternately,
# with the load and the machine's idle CPU time during each restore.
# Cheaper than scripts/bench-storage.sh (no new process per run), so more
# rounds fit in a quiet moment.
#
#   BINS="/tmp/cedana-a /tmp/cedana-b" ROUNDS=8 scripts/bench-s3-restore.sh
#
# PROF=DIR writes a CPU profile of every restore (CEDANA_CPUPROFILE).
set -euo pipefail
cd "$(dirname "$0")/.."
BINS=${BINS:-$PWD/bin/cedana}
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-8}
B=${BENCH_DIR:-/var/tmp/cedana-s3-restore-bench}
PY=$(command -v python3)
export PATH=/usr/local/go/bin:/usr/local/sbin:$PATH
. scripts/lib/versitygw.sh
[ -x "$VGW" ] || { echo "versitygw missing at $VGW: run scripts/setup-servers.sh" >&2; exit 1; }
rm -rf "$B"; mkdir -p "$B/home"; export HOME=$B/home
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$B"; }
trap cleanup EXIT
first=${BINS%% *}
"$first" storage keygen "$B/key" >/dev/null 2>&1
start_versitygw "$B"
keyenv() { case $1 in *+enc) echo "CEDANA_STORAGE_ENCRYPTION_KEY_FILE=$B/key" ;; *) echo "CEDANA_BENCH_PLAIN=1" ;; esac; }
# gone waits until PID $1 is free again (reaped, not only dead): the next
# restore brings the process back under the same PID.
gone() { for _ in $(seq 500); do [ -e "/proc/$1" ] || return 0; sleep 0.02; done; echo "PID $1 still taken" >&2; exit 1; }
declare -A loc times
for c in s3 s3+enc; do
  ready="$B/ready.$RANDOM"
  setsid "$PY" bench/memhog.py "$ready" "$SIZE_MIB" </dev/null >/dev/null 2>&1 &
  hog=$!; pids+=("$hog")
  while [ ! -s "$ready" ]; do sleep 0.1; done
  loc[$c]=$(env "$(keyenv $c)" "$first" client dump -p "$hog" -d "s3://bench/$c" 2>"$B/err") || { cat "$B/err" >&2; exit 1; }
  wait "$hog" 2>/dev/null || true
done
idle() { awk '/^cpu /{print $5+$6}' /proc/stat; }
for r in $(seq "$ROUNDS"); do
  for c in s3 s3+enc; do
    for bin in $BINS; do
      prof=(); [ -n "${PROF:-}" ] && prof=(CEDANA_CPUPROFILE="$PROF/$c.$(basename "$bin").$r.prof")
      i0=$(idle); t0=$(date +%s.%N)
      rp=$(env "$(keyenv $c)" "${prof[@]}" "$bin" client restore "${loc[$c]}" 2>"$B/err") || { cat "$B/err" >&2; exit 1; }
      t1=$(date +%s.%N); i1=$(idle)
      pids+=("$rp"); kill -9 "$rp"; gone "$rp"
      t=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
      k="$c@$(basename "$bin")"; times[$k]+=" $t"
      printf 'round %s %-7s %-20s %s s  idle %.2f CPU-s  load %s\n' "$r" "$c" "$(basename "$bin")" "$t" \
        "$(awk -v a="$i0" -v b="$i1" 'BEGIN{print (b-a)/100}')" "$(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
echo
echo "| binary | restore s3 | restore s3+enc | s3+enc / s3 (bar ≤ 1.10×) |"
echo "| --- | --- | --- | --- |"
for bin in $BINS; do
  a=$(echo "${times[s3@$(basename "$bin")]}" | median); e=$(echo "${times[s3+enc@$(basename "$bin")]}" | median)
  printf '| %s | %.3f s | %.3f s | %.2f× |\n' "$(basename "$bin")" "$a" "$e" "$(awk -v x="$e" -v y="$a" 'BEGIN{print x/y}')"
done
