# Sourced by the storage benchmarks (bench-storage.sh, bench-s3-restore.sh):
# an S3 server on this machine and the environment that points cedana at it.
#
#   start_versitygw DIR   serves DIR/s3data (bucket "bench") on a free
#                         loopback port, as a stripped-down user; appends its
#                         PID to the caller's pids array; exports AWS_* and
#                         CEDANA_STORAGE_S3_* for s3://bench/… URLs.
#   median                the median of the numbers on stdin.
#
# The binary is the pinned one scripts/setup-servers.sh builds into the
# server cache (CEDANA_SERVER_CACHE, default /var/cache/cedana/bin).

VGW=${CEDANA_SERVER_CACHE:-/var/cache/cedana/bin}/versitygw-v1.8.0

start_versitygw() {
  local dir=$1 port
  [ -x "$VGW" ] || { echo "versitygw missing at $VGW: run scripts/setup-servers.sh" >&2; return 1; }
  mkdir -p "$dir/s3data/bench"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (cd "$dir" && exec env -i PATH=/usr/bin:/bin HOME="$dir" "$VGW" --access benchaccess --secret bench-secret-key \
    --port "127.0.0.1:$port" --region us-east-1 --quiet posix "$dir/s3data" >"$dir/vgw.log" 2>&1) &
  pids+=("$!")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  export AWS_ACCESS_KEY_ID=benchaccess AWS_SECRET_ACCESS_KEY=bench-secret-key
  export CEDANA_STORAGE_S3_ENDPOINT="http://127.0.0.1:$port" CEDANA_STORAGE_S3_PATH_STYLE=true CEDANA_STORAGE_S3_REGION=us-east-1
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
