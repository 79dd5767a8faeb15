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
# shellcheck disable=SC2086 # BENCH_FLAGS is a list of flags
"$BUILD/bench-daemon" -cedana "$BIN" -memhog bench/memhog.py -work "$BENCH_DIR" \
  -only "${BENCH_ONLY:-a,b,c,d}" ${BENCH_FLAGS:-}
