#!/usr/bin/env bash
# Benchmarks failover (issue 13) on this machine:
#  1. failover time: three daemons on three real nats-server processes,
#     checkpoints in a shared directory, a job checkpointed every 2 s; the
#     node that runs it is killed whole (daemon, fence watchdog, job),
#     TRIALS times, and the time from the kill until the job's counter
#     moves on another node is measured (test/integration TestFailoverTime,
#     node timeout 3 s). Bar: p50 and max ≤ node timeout + 2 s.
#  2. the cost of leases and heartbeats: part a of bench/daemon (JOBS idle
#     jobs checkpointed every 10 s) with the daemon in cluster mode
#     (embedded NATS, every job holding a lease) and without. Bar: ≤ 5 % of
#     one core with the cluster on.
# Needs root, CRIU, python3 and the pinned nats-server (`make setup`).
# Environment: TRIALS (default 10), JOBS (default 100), WINDOW (default 60s).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-failover: needs root (CRIU does)" >&2; exit 5; }
TRIALS=${TRIALS:-10}
JOBS=${JOBS:-100}
WINDOW=${WINDOW:-60s}
make -s build
echo "## Failover time ($TRIALS trials)"
CEDANA_BIN=$PWD/bin/cedana CEDANA_BENCH_FAILOVER_TRIALS=$TRIALS \
  go test -count=1 -timeout 30m ./test/integration -run '^TestFailoverTime$' -v 2>&1 |
  grep -E '^(FAILOVER_|--- |ok|FAIL)'
echo
echo "## Idle overhead with and without the cluster ($JOBS jobs)"
for c in false true; do
  go run ./bench/daemon -only a -jobs "$JOBS" -window "$WINDOW" -a-network-locks default -a-skip-unchanged safe -a-cluster=$c
done
