#!/usr/bin/env bash
# Container checkpoint and restore times: cedana next to the runtimes' own paths, on the
# same busybox counter container, in the same run, and a markdown table with medians and
# ratios (progress on stderr).
#
#   docker checkpoint   = docker checkpoint create C NAME (container stopped; images under
#                         the engine's data root)
#   cedana dump docker  = cedana dump docker C (engine checkpoint + writable layer + archive
#                         written, fsynced, renamed)
#   docker start        = docker start --checkpoint NAME C (existing container)
#   cedana restore      = cedana restore docker FILE after `docker rm C` (verify, extract,
#                         recreate the container from its image, fill its layer, start)
#   runc checkpoint / restore = runc checkpoint / runc restore -d of the same bundle, vs
#                         cedana dump runc / cedana restore runc
#
# Uses the running Docker engine when it can checkpoint, else starts a private dockerd
# (experimental, own data root and socket) and stops it at the end. Needs root, CRIU,
# docker.io, runc and busybox-static (`make setup`).
#
# Environment: CEDANA_BIN (default: built), RUNS (default 5), BENCH_DIR (default
# /var/tmp/cedana-bench-containers, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-containers: needs root" >&2; exit 5; }
for p in criu runc python3; do
  command -v "$p" >/dev/null || { echo "bench-containers: $p not on PATH: run make setup" >&2; exit 5; }
done
DOCKERD=$(command -v dockerd || echo /usr/sbin/dockerd)
[ -x "$DOCKERD" ] || { echo "bench-containers: dockerd not installed: run make setup" >&2; exit 5; }
DOCKER=/usr/bin/docker # the client that comes with Debian's engine
[ -x "$DOCKER" ] || DOCKER=$(command -v docker)
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

RUNS=${RUNS:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp/cedana-bench-containers}
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
export HOME="$BENCH_DIR/home" CEDANA_DAEMON_STATE_DIR="$BENCH_DIR/state"
BIN=${CEDANA_BIN:-}
if [ -z "$BIN" ]; then
  BIN=$BENCH_DIR/cedana
  go build -trimpath -o "$BIN" ./cmd/cedana
fi
RUNC_ROOT=$(mktemp -d /tmp/cbr.XXXXXX)
DK=""; DOCKERD_PID=""
log() { printf '[bench-containers] %s\n' "$*" >&2; }

cleanup() {
  set +e
  if [ -n "$DOCKER_HOST" ]; then
    for c in $("$DOCKER" ps -aq --filter name=cedana-bench 2>/dev/null); do "$DOCKER" rm -f "$c" >/dev/null 2>&1; done
  fi
  for c in $(runc --root "$RUNC_ROOT" list -q 2>/dev/null); do
    runc --root "$RUNC_ROOT" kill "$c" KILL 2>/dev/null; runc --root "$RUNC_ROOT" delete -f "$c" 2>/dev/null
  done
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 200); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
  fi
  for d in "$DK" "$BENCH_DIR"; do
    [ -n "$d" ] || continue
    awk -v p="$d/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  done
  rm -rf "$RUNC_ROOT" "$BENCH_DIR" ${DK:+"$DK"}
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2fx", a/b; else print "-" }'; }

# --- the engine ---
export DOCKER_HOST=""
if [ -S /var/run/docker.sock ] && "$DOCKER" -H unix:///var/run/docker.sock info --format '{{.ExperimentalBuild}}' 2>/dev/null | grep -q true; then
  export DOCKER_HOST=unix:///var/run/docker.sock
  log "using the running Docker engine"
else
  DK=$(mktemp -d /tmp/cbd.XXXXXX)
  echo '{"experimental": true}' >"$DK/daemon.json"
  setsid "$DOCKERD" --config-file "$DK/daemon.json" --data-root "$DK/data" --exec-root "$DK/exec" \
    -H "unix://$DK/docker.sock" --pidfile "$DK/docker.pid" --iptables=false --ip-masq=false \
    </dev/null >"$DK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  export DOCKER_HOST="unix://$DK/docker.sock"
  for _ in $(seq 300); do "$DOCKER" version >/dev/null 2>&1 && break; sleep 0.1; done
  "$DOCKER" version >/dev/null 2>&1 || { tail -20 "$DK/dockerd.log" >&2; echo "dockerd did not start" >&2; exit 1; }
  log "started a private dockerd ($("$DOCKERD" --version))"
fi

# --- the image and the bundle: busybox-static ---
ROOTFS=$BENCH_DIR/rootfs
mkdir -p "$ROOTFS"/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$ROOTFS/bin/busybox"
chroot "$ROOTFS" /bin/busybox --install -s /bin
tar -C "$ROOTFS" -cf "$BENCH_DIR/rootfs.tar" .
"$DOCKER" import "$BENCH_DIR/rootfs.tar" cedana-bench-busybox:latest >/dev/null
COUNTER='i=0; while :; do echo $i > /count; i=$((i+1)); sleep 0.05; done'
BUNDLE=$BENCH_DIR/bundle
mkdir -p "$BUNDLE"
runc spec --bundle "$BUNDLE"
python3 - "$BUNDLE/config.json" "$ROOTFS" "$COUNTER" <<'EOF'
import json, sys
p, rootfs, cmd = sys.argv[1:]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", cmd]
c["root"] = {"path": rootfs, "readonly": False}
json.dump(c, open(p, "w"), indent=1)
EOF
jsonfield() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

d_ck=(); d_st=(); c_dump=(); c_rest=(); r_ck=(); r_rest=(); rc_dump=(); rc_rest=(); size=0
for run in $(seq "$RUNS"); do
  log "run $run/$RUNS: docker"
  name=cedana-bench-$run
  "$DOCKER" run -d --name "$name" cedana-bench-busybox:latest sh -c "$COUNTER" >/dev/null
  sleep 0.5
  # Docker's own path, on this container.
  t0=$(now); "$DOCKER" checkpoint create "$name" ck >/dev/null; t1=$(now)
  d_ck+=("$(elapsed "$t0" "$t1")")
  for _ in $(seq 100); do [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$name")" = false ] && break; sleep 0.05; done
  t0=$(now); "$DOCKER" start --checkpoint ck "$name" >/dev/null; t1=$(now)
  d_st+=("$(elapsed "$t0" "$t1")")
  sleep 0.3
  # Cedana's, on the same container, to a portable archive.
  t0=$(now); out=$("$BIN" dump docker "$name" -d "$BENCH_DIR/dumps" 2>/dev/null); t1=$(now)
  c_dump+=("$(elapsed "$t0" "$t1")")
  size=$(stat -c %s "$out")
  for _ in $(seq 100); do [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$name")" = false ] && break; sleep 0.05; done
  "$DOCKER" rm "$name" >/dev/null
  t0=$(now); "$BIN" restore docker "$out" >/dev/null 2>&1; t1=$(now)
  c_rest+=("$(elapsed "$t0" "$t1")")
  "$DOCKER" rm -f "$name" >/dev/null

  log "run $run/$RUNS: runc"
  id=bench$run img=$BENCH_DIR/img$run
  mkdir -p "$img" "$img.work"
  runc --root "$RUNC_ROOT" run -d --bundle "$BUNDLE" "$id" </dev/null >/dev/null 2>&1
  sleep 0.5
  t0=$(now); runc --root "$RUNC_ROOT" checkpoint --image-path "$img" --work-path "$img.work" "$id"; sync "$img"/*; t1=$(now)
  r_ck+=("$(elapsed "$t0" "$t1")")
  t0=$(now); runc --root "$RUNC_ROOT" restore -d --image-path "$img" --work-path "$img.work" --bundle "$BUNDLE" "$id" </dev/null >/dev/null 2>&1; t1=$(now)
  r_rest+=("$(elapsed "$t0" "$t1")")
  runc --root "$RUNC_ROOT" kill "$id" KILL; sleep 0.2; runc --root "$RUNC_ROOT" delete -f "$id"
  "$BIN" run runc --runc-root "$RUNC_ROOT" --bundle "$BUNDLE" --id "$id" >/dev/null 2>&1
  sleep 0.5
  t0=$(now); out=$("$BIN" dump runc --runc-root "$RUNC_ROOT" --id "$id" -d "$BENCH_DIR/dumps" 2>/dev/null); t1=$(now)
  rc_dump+=("$(elapsed "$t0" "$t1")")
  t0=$(now); "$BIN" restore runc --runc-root "$RUNC_ROOT" "$out" >/dev/null 2>&1; t1=$(now)
  rc_rest+=("$(elapsed "$t0" "$t1")")
  runc --root "$RUNC_ROOT" kill "$id" KILL; sleep 0.2; runc --root "$RUNC_ROOT" delete -f "$id"
done

m() { printf '%s ' "$@" | median; }
dck=$(m "${d_ck[@]}"); dst=$(m "${d_st[@]}"); cd_=$(m "${c_dump[@]}"); cr=$(m "${c_rest[@]}")
rck=$(m "${r_ck[@]}"); rr=$(m "${r_rest[@]}"); rcd=$(m "${rc_dump[@]}"); rcr=$(m "${rc_rest[@]}")
echo
echo "Container checkpoint/restore, busybox counter, median of $RUNS runs (wall seconds, CLI to CLI); archive $((size / 1024)) KiB"
echo
echo "| step | runtime's own | cedana (portable archive) | ratio |"
echo "| --- | --- | --- | --- |"
echo "| docker checkpoint | $dck (docker checkpoint create) | $cd_ (cedana dump docker) | $(ratio "$cd_" "$dck") |"
echo "| docker restore | $dst (docker start --checkpoint) | $cr (cedana restore docker, container recreated) | $(ratio "$cr" "$dst") |"
echo "| runc checkpoint | $rck (runc checkpoint + sync) | $rcd (cedana dump runc) | $(ratio "$rcd" "$rck") |"
echo "| runc restore | $rr (runc restore -d) | $rcr (cedana restore runc) | $(ratio "$rcr" "$rr") |"
echo
echo "all runs: docker checkpoint ${d_ck[*]} | cedana dump docker ${c_dump[*]} | docker start ${d_st[*]} | cedana restore docker ${c_rest[*]}"
echo "          runc checkpoint ${r_ck[*]} | cedana dump runc ${rc_dump[*]} | runc restore ${r_rest[*]} | cedana restore runc ${rc_rest[*]}"
