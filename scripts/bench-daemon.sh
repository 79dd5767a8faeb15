#!/usr/bin/env bash
# Benchmarks the daemon against its bars and prints a markdown table
# (progress goes to stderr):
#   (a) daemon CPU and RSS with 100 idle jobs checkpointed every 10 s, over 60 s
#   (b) ListJobs p50/p99 with 100 jobs and 10,000 checkpoints in the catalogue
#   (c) dump of a 256 MiB process: through the daemon vs the standalone client
#   (d) deduplicated periodic checkpoints of a 1 GiB job rewriting 1 % per
#       period: bytes stored per checkpoint; restore vs self-contained
# Needs root and CRIU (`make setup`). Takes about 5 minutes.
#
# Environment: CEDANA_BIN (default: built into the work dir), BENCH_DIR
# (default /var/tmp/cedana-bench-daemon, removed at the end), BENCH_ONLY
# (e.g. "a,c"), and any extra flags of bench/daemon in BENCH_FLAGS
# (e.g. "-window 30s -runs 3").
#
# BENCH_AGAINST=/path/to/another/cedana runs the same parts with that
# binary at the same time, in its own work dir, and prints its table
# after this one's: a fair A/B on a shared machine, where the load (and
# with it CRIU's CPU per dump, the denominator of part a's ratio) changes
# from one minute to the next. Both runs share the cores, so compare the
# two tables with each other, not with a run alone.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-daemon: needs root (CRIU does)" >&2; exit 5; }
command -v criu >/dev/null || { echo "bench-daemon: criu not on PATH: run make setup" >&2; exit 5; }
command -v python3 >/dev/null || { echo "bench-daemon: python3 not on PATH" >&2; exit 5; }

BENCH_DIR=${BENCH_DIR:-/var/tmp/cedana-bench-daemon}
BUILD=$(mktemp -d /tmp/cedana-bench-build.XXXXXX)
trap 'rm -rf "$BUILD"' EXIT
BIN=${CEDANA_BIN:-}
if [ -z "$BIN" ]; then
  BIN=$BUILD/cedana
  go build -trimpath -o "$BIN" ./cmd/cedana
fi
go build -trimpath -o "$BUILD/bench-daemon" ./bench/daemon
run() { # run BIN WORK
  # shellcheck disable=SC2086 # BENCH_FLAGS is a list of flags
  "$BUILD/bench-daemon" -cedana "$1" -memhog bench/memhog.py -work "$2" \
    -only "${BENCH_ONLY:-a,b,c,d}" ${BENCH_FLAGS:-}
}
if [ -z "${BENCH_AGAINST:-}" ]; then
  run "$BIN" "$BENCH_DIR"
  exit
fi
run "$BIN" "$BENCH_DIR" >"$BUILD/a.md" 2> >(sed 's/^/[A] /' >&2) &
a=$!
run "$BENCH_AGAINST" "$BENCH_DIR-against" >"$BUILD/b.md" 2> >(sed 's/^/[B] /' >&2) &
b=$!
status=0
wait "$a" || status=$?
wait "$b" || status=$?
echo "A: $BIN"; cat "$BUILD/a.md"; echo
echo "B: $BENCH_AGAINST"; cat "$BUILD/b.md"
exit "$status"
