#!/usr/bin/env bash
# What `make bench` runs: dump and restore a process holding SIZE_MIB of
# memory (half random, half text) with cedana and with raw criu, in the
# same run, on the same disk, and print medians and ratios.
#
#   raw dump     = criu dump -D DIR (process killed) + sync of the images
#   cedana dump  = cedana client dump (archive written, fsynced, renamed)
#   raw restore  = criu restore -d -D DIR
#   stream floor = the same images through criu restore --stream, fed by a
#                  source that only splices the files (bench/streamfloor):
#                  the cost of CRIU's stream mode, which cedana restores use
#   cedana restore = cedana client restore FILE.zip (verify + restore),
#                    right after the dump, like raw criu's: both inputs are
#                    in the page cache (both were written through it)
#
# Environment: SIZE_MIB (default 1024), RUNS (default 3), BENCH_DIR
# (default /var/tmp/cedana-bench: the same disk for both), COLD=1 also
# measures restores after dropping the page cache, RESULTS (default
# bench/results/process.tsv; empty: keep nothing) receives every run's
# figures, one line per measurement, so that scripts/bench-pool.sh can pool
# runs of several invocations: no figure in docs/benchmarks.md is computed
# by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CEDANA_BIN:-$PWD/bin/cedana}
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/cedana-bench}
PY=$(command -v python3)
FLOOR="$BENCH_DIR/streamfloor"
RESULTS=${RESULTS-$PWD/bench/results/process.tsv}
INVOCATION="$(date -u +%Y-%m-%dT%H:%M:%SZ) $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo -dirty)"
# record RUN METRIC SECONDS: one line of RESULTS (tab-separated: time, commit, size, run, metric, value).
record() {
  [ -n "$RESULTS" ] || return 0
  mkdir -p "$(dirname "$RESULTS")"
  [ -s "$RESULTS" ] || printf 'time\tcommit\tsize_mib\trun\tmetric\tvalue\n' > "$RESULTS"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${INVOCATION% *}" "${INVOCATION#* }" "$SIZE_MIB" "$1" "$2" "$3" >> "$RESULTS"
}

rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
go build -o "$FLOOR" ./bench/streamfloor
export HOME="$BENCH_DIR/home"   # isolated cedana config and logs
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$BENCH_DIR"; }
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# start_hog: start a memory holder; sets HOG_PID.
start_hog() {
  local ready="$BENCH_DIR/ready.$RANDOM"
  setsid "$PY" bench/memhog.py "$ready" "$SIZE_MIB" </dev/null >/dev/null 2>&1 &
  HOG_PID=$!
  pids+=("$HOG_PID")
  while [ ! -s "$ready" ]; do sleep 0.1; done
  rm -f "$ready"
}
# wait_gone PID: reap it and wait until no process uses it as PID, group or session.
wait_gone() {
  wait "$1" 2>/dev/null || true
  for _ in $(seq 500); do
    if ! awk '{print $1; print $5; print $6}' /proc/[0-9]*/stat 2>/dev/null | grep -qx "$1"; then return; fi
    sleep 0.02
  done
  echo "PID $1 still taken" >&2; exit 1
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || { echo "cannot drop caches" >&2; COLD=0; }; }

raw_dump=(); raw_restore=(); ced_dump=(); ced_restore=(); raw_cold=(); ced_cold=(); floor_restore=()
zstd_size=0; archive_size=0; images_size=0
for run in $(seq "$RUNS"); do
  # --- raw criu ---
  start_hog; pid=$HOG_PID; dir="$BENCH_DIR/raw$run"; mkdir -p "$dir"
  t0=$(now)
  criu dump -t "$pid" -D "$dir" -o dump.log || { echo "run $run: criu dump failed:" >&2; tail -15 "$dir/dump.log" >&2; exit 1; }
  sync "$dir"/* "$dir"
  t1=$(now); raw_dump+=("$(elapsed "$t0" "$t1")")
  wait_gone "$pid"
  images_size=$(du -sb "$dir" | cut -f1)
  if [ "$run" = 1 ]; then zstd_size=$(tar cf - -C "$dir" . | zstd -1 -T2 -q -c | wc -c); fi
  t0=$(now); criu restore -d -D "$dir" -o restore.log --pidfile "$dir/pid" || { echo "run $run: criu restore failed:" >&2; tail -15 "$dir/restore.log" >&2; exit 1; }; t1=$(now)
  raw_restore+=("$(elapsed "$t0" "$t1")")
  rpid=$(cat "$dir/pid"); pids+=("$rpid"); kill -9 "$rpid"; wait_gone "$rpid"
  # The same images through `criu restore --stream`, fed by a source
  # that only splices the files: what CRIU's stream mode itself costs.
  t0=$(now); rpid=$("$FLOOR" "$dir" "$BENCH_DIR/floor$run"); t1=$(now)
  floor_restore+=("$(elapsed "$t0" "$t1")")
  pids+=("$rpid"); kill -9 "$rpid"; wait_gone "$rpid"
  if [ "${COLD:-0}" = 1 ]; then
    drop_caches
    t0=$(now); criu restore -d -D "$dir" -o restore2.log --pidfile "$dir/pid2"; t1=$(now); raw_cold+=("$(elapsed "$t0" "$t1")")
    rpid=$(cat "$dir/pid2"); pids+=("$rpid"); kill -9 "$rpid"; wait_gone "$rpid"
  fi
  rm -rf "$dir"

  # --- cedana ---
  start_hog; pid=$HOG_PID; dir="$BENCH_DIR/ced$run"
  t0=$(now); archive=$("$BIN" client dump -p "$pid" -d "$dir"); t1=$(now)
  ced_dump+=("$(elapsed "$t0" "$t1")")
  wait_gone "$pid"
  archive_size=$(stat -c %s "$archive")
  t0=$(now); rpid=$("$BIN" client restore "$archive"); t1=$(now)
  ced_restore+=("$(elapsed "$t0" "$t1")")
  pids+=("$rpid"); kill -9 "$rpid"; wait_gone "$rpid"
  if [ "${COLD:-0}" = 1 ]; then
    drop_caches
    t0=$(now); rpid=$("$BIN" client restore "$archive"); t1=$(now); ced_cold+=("$(elapsed "$t0" "$t1")")
    pids+=("$rpid"); kill -9 "$rpid"; wait_gone "$rpid"
  fi
  rm -rf "$dir"
  record "$run" raw_dump "${raw_dump[-1]}"; record "$run" raw_restore "${raw_restore[-1]}"
  record "$run" floor_restore "${floor_restore[-1]}"
  record "$run" cedana_dump "${ced_dump[-1]}"; record "$run" cedana_restore "${ced_restore[-1]}"
  if [ "${COLD:-0}" = 1 ]; then record "$run" raw_restore_cold "${raw_cold[-1]}"; record "$run" cedana_restore_cold "${ced_cold[-1]}"; fi
  record "$run" archive_bytes "$archive_size"
  echo "run $run: raw dump ${raw_dump[-1]}s restore ${raw_restore[-1]}s | cedana dump ${ced_dump[-1]}s restore ${ced_restore[-1]}s" >&2
done

rd=$(echo "${raw_dump[*]}" | median); cd_=$(echo "${ced_dump[*]}" | median)
rr=$(echo "${raw_restore[*]}" | median); cr=$(echo "${ced_restore[*]}" | median)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
echo
echo "Process: ${SIZE_MIB} MiB (half random, half text); $RUNS runs, medians; disk: $BENCH_DIR ($(df --output=source "$BENCH_DIR" | tail -1))"
echo "criu $(criu --version | head -1 | awk '{print $2}'), cedana $("$BIN" --version | awk '{print $3}'), $(nproc) cores, kernel $(uname -r)"
echo
printf '| %-44s | %8s | %8s | %6s | %s\n' "step" "raw criu" "cedana" "ratio" "bar"
printf '|%s|%s|%s|%s|%s\n' "----------------------------------------------" "----------" "----------" "--------" "------"
printf '| %-44s | %7ss | %7ss | %5s× | ≤ 1.3×\n' "dump (raw: criu dump + sync; cedana: archive)" "$rd" "$cd_" "$(ratio "$cd_" "$rd")"
printf '| %-44s | %7ss | %7ss | %5s× | ≤ 1.3×\n' "restore, right after the dump (page cache warm)" "$rr" "$cr" "$(ratio "$cr" "$rr")"
fr=$(echo "${floor_restore[*]}" | median)
printf '| %-44s | %7ss | %7ss | %5s× | -\n' "restore through criu --stream, no-op feeder" "$rr" "$fr" "$(ratio "$fr" "$rr")"
if [ "${COLD:-0}" = 1 ]; then
  rc=$(echo "${raw_cold[*]}" | median); cc=$(echo "${ced_cold[*]}" | median)
  printf '| %-44s | %7ss | %7ss | %5s× | -\n' "restore (page cache dropped)" "$rc" "$cc" "$(ratio "$cc" "$rc")"
fi
echo
echo "images: $images_size bytes; zstd -1 of the images: $zstd_size bytes; cedana archive: $archive_size bytes ($(ratio "$archive_size" "$zstd_size")× zstd -1)"
echo "raw runs: dump ${raw_dump[*]} restore ${raw_restore[*]}; criu --stream no-op feeder restore ${floor_restore[*]}"
echo "cedana runs: dump ${ced_dump[*]} restore ${ced_restore[*]}"
