#!/usr/bin/env bash
# What `make demo` runs after setup and build: start a sample process that
# counts in memory, checkpoint it into an archive, show what the archive
# holds, restore it, and show that the count continued instead of starting
# over. Cleans up by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CEDANA_BIN:-bin/cedana}
work=$(mktemp -d /tmp/cedana-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "cedana check"
"$BIN" check

say "Starting a sample job: a counter that lives only in memory"
setsid bash -c 'i=0; while :; do echo "$i" > '"$work"'/count; i=$((i+1)); sleep 0.1; done' \
  </dev/null >/dev/null 2>&1 &
pid=$!
pids+=("$pid")
sleep 1.5
# read_count: the counter, read until the job is not between truncating
# the file and writing it.
read_count() { local v=""; for _ in $(seq 50); do v=$(cat "$work/count" 2>/dev/null); [ -n "$v" ] && break; sleep 0.02; done; echo "$v"; }
counted=$(read_count)
echo "PID $pid counted to $counted"

say "cedana client dump -p $pid -d $work/dumps"
archive=$("$BIN" client dump -p "$pid" -d "$work/dumps")
{ wait "$pid"; } 2>/dev/null || true   # reap it so that its PID is free again
before=$(cat "$work/count")
echo "archive: $archive"
# A dump may catch the job between truncating the file and writing it:
# then the restored job writes that number first.
echo "the job is gone; its count stopped at ${before:-$counted (its file was being rewritten)}"
before=${before:-$counted}

say "cedana inspect $archive"
"$BIN" inspect --verify "$archive" | sed -n '1,12p'

say "cedana client restore $archive"
newpid=$("$BIN" client restore "$archive")
pids+=("$newpid")
sleep 1
after=$(read_count)
echo "restored as PID $newpid; count went on from $before to $after"
if [ "$after" -gt "$before" ]; then
  say "Demo OK: the job resumed where it stopped"
else
  echo "demo FAILED: the counter did not continue" >&2
  exit 1
fi
