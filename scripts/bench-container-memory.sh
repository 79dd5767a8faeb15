#!/usr/bin/env bash
# A runc container holding MIB MiB of memory (python3, half random, half text): cedana's
# dump and restore with its memory staged (criu.stream=false: CRIU writes the images to the
# staging directory, then they are archived) and streamed (the CRIU bridge: pages straight
# into the archive and back), with runc's own checkpoint/restore for reference; interleaved
# in one run. Also the peak size of the staging directory (sampled every 20 ms).
# Prints a markdown table of medians (progress on stderr).
#
# Needs root, CRIU, runc, python3, busybox-static (`make setup`).
# Environment: CEDANA_BIN (default: built), RUNS (default 3), MIB (default 256),
# BENCH_DIR (default /var/tmp/cedana-bench-ctrmem, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-container-memory: needs root" >&2; exit 5; }
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
for p in criu runc python3 busybox; do
  command -v "$p" >/dev/null || { echo "bench-container-memory: $p not on PATH: run make setup" >&2; exit 5; }
done
RUNS=${RUNS:-3}
MIB=${MIB:-256}
BENCH_DIR=${BENCH_DIR:-/var/tmp/cedana-bench-ctrmem}
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
export HOME="$BENCH_DIR/home" CEDANA_DAEMON_STATE_DIR="$BENCH_DIR/state"
BIN=${CEDANA_BIN:-}
if [ -z "$BIN" ]; then
  BIN=$BENCH_DIR/cedana
  go build -trimpath -o "$BIN" ./cmd/cedana
fi
RUNC_ROOT=$(mktemp -d /tmp/cbm.XXXXXX)
STG=$BENCH_DIR/staging
mkdir -p "$STG" "$BENCH_DIR/dumps"
log() { printf '[bench-container-memory] %s\n' "$*" >&2; }
cleanup() {
  set +e
  for c in $(runc --root "$RUNC_ROOT" list -q 2>/dev/null); do runc --root "$RUNC_ROOT" delete -f "$c" 2>/dev/null; done
  awk -v p="$BENCH_DIR/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$RUNC_ROOT" "$BENCH_DIR"
}
trap cleanup EXIT
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
m() { printf '%s ' "$@" | median; }

# The bundle: busybox, the host's /usr read-only for python3.
ROOTFS=$BENCH_DIR/rootfs
mkdir -p "$ROOTFS"/{bin,proc,sys,dev,tmp,etc,usr}
cp /bin/busybox "$ROOTFS/bin/busybox"
chroot "$ROOTFS" /bin/busybox --install -s /bin
ln -s usr/lib "$ROOTFS/lib"; ln -s usr/lib64 "$ROOTFS/lib64"
cat >"$ROOTFS/mem.py" <<EOF
import os, time
half = $MIB << 19
buf = bytearray(os.urandom(half)) + bytearray(b"step=1 loss=0.25 the quick brown fox\n" * (half // 37 + 1))[:half]
i = 0
while True:
    with open("/count.tmp", "w") as f:
        f.write(str(i))
    os.replace("/count.tmp", "/count")
    i += 1
    time.sleep(0.05)
EOF
BUNDLE=$BENCH_DIR/bundle
mkdir -p "$BUNDLE"
runc spec --bundle "$BUNDLE"
python3 - "$BUNDLE/config.json" "$ROOTFS" <<'EOF'
import json, sys
p, rootfs = sys.argv[1:]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["/usr/bin/python3", "/mem.py"]
c["root"] = {"path": rootfs, "readonly": False}
c["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]})
json.dump(c, open(p, "w"), indent=1)
EOF
pidof_ctr() { runc --root "$RUNC_ROOT" state "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])'; }
wait_counting() { # until the container counts (its memory is allocated)
  for _ in $(seq 600); do
    p=$(pidof_ctr "$1" 2>/dev/null || echo 0)
    # counting, and holding the memory (runc's own run writes /count into
    # the shared rootfs: the count alone proves nothing)
    [ "$p" != 0 ] && [ -s "/proc/$p/root/count" ] &&
      [ "$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$p/status" 2>/dev/null || echo 0)" -ge "$MIB" ] && return 0
    sleep 0.1
  done
  echo "container $1 does not count" >&2; exit 1
}
# peak bytes under $STG while "$@" runs
PEAK=0
peak_of() {
  ( set +e; mx=0; while :; do s=$(du -sb "$STG" 2>/dev/null | cut -f1); [ "${s:-0}" -gt "$mx" ] && mx=$s && echo "$mx" >"$BENCH_DIR/peak"; sleep 0.02; done ) &
  local sampler=$!
  echo 0 >"$BENCH_DIR/peak"
  "$@"
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  PEAK=$(cat "$BENCH_DIR/peak")
}

r_ck=(); r_rs=(); s_d=(); s_r=(); t_d=(); t_r=(); s_pk=0; t_pk=0; s_sz=0; t_sz=0
cedana_pair() { # MODE(staged|streamed) ID → appends times
  local mode=$1 id=$2 env=() out t0 t1
  [ "$mode" = staged ] && env=(CEDANA_CRIU_STREAM=false)
  "$BIN" run runc --runc-root "$RUNC_ROOT" --bundle "$BUNDLE" --id "$id" >/dev/null
  wait_counting "$id"
  t0=$(now); peak_of env "${env[@]}" "$BIN" --staging-dir "$STG" dump runc --runc-root "$RUNC_ROOT" --id "$id" -d "$BENCH_DIR/dumps" >"$BENCH_DIR/out"; t1=$(now)
  out=$(cat "$BENCH_DIR/out")
  local dpk=$PEAK dt; dt=$(elapsed "$t0" "$t1")
  t0=$(now); peak_of env "${env[@]}" "$BIN" --staging-dir "$STG" restore runc --runc-root "$RUNC_ROOT" "$out" >/dev/null; t1=$(now)
  local rpk=$PEAK rt; rt=$(elapsed "$t0" "$t1")
  local pk=$(( dpk > rpk ? dpk : rpk )) sz; sz=$(stat -c %s "$out")
  if [ "$mode" = staged ]; then s_d+=("$dt"); s_r+=("$rt"); s_pk=$pk; s_sz=$sz
  else t_d+=("$dt"); t_r+=("$rt"); t_pk=$pk; t_sz=$sz; fi
  sleep 1; kill -0 "$(pidof_ctr "$id")" || { echo "restored container $id does not run" >&2; exit 1; }
  runc --root "$RUNC_ROOT" delete -f "$id"; rm -f "$out"
}
for run in $(seq "$RUNS"); do
  log "run $run/$RUNS: runc's own"
  id=own$run img=$BENCH_DIR/img$run
  mkdir -p "$img" "$img.work"
  runc --root "$RUNC_ROOT" run -d --bundle "$BUNDLE" "$id" </dev/null >/dev/null 2>&1
  wait_counting "$id"
  t0=$(now); runc --root "$RUNC_ROOT" checkpoint --image-path "$img" --work-path "$img.work" "$id"; sync "$img"/*; t1=$(now)
  r_ck+=("$(elapsed "$t0" "$t1")")
  t0=$(now); runc --root "$RUNC_ROOT" restore -d --image-path "$img" --work-path "$img.work" --bundle "$BUNDLE" "$id" </dev/null >/dev/null 2>&1; t1=$(now)
  r_rs+=("$(elapsed "$t0" "$t1")")
  runc --root "$RUNC_ROOT" delete -f "$id"; rm -rf "$img" "$img.work" "$ROOTFS/count" "$ROOTFS/count.tmp"
  log "run $run/$RUNS: cedana, staged"
  cedana_pair staged st$run
  log "run $run/$RUNS: cedana, streamed"
  cedana_pair streamed sm$run
done
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }
echo
echo "runc container holding $MIB MiB (python3), median of $RUNS runs, wall seconds CLI to CLI, staging dir on $(df --output=fstype "$STG" | tail -1)"
echo
echo "| step | runc's own (images on disk) | cedana, memory staged | cedana, memory streamed |"
echo "| --- | --- | --- | --- |"
echo "| checkpoint | $(m "${r_ck[@]}") | $(m "${s_d[@]}") | $(m "${t_d[@]}") |"
echo "| restore | $(m "${r_rs[@]}") | $(m "${s_r[@]}") | $(m "${t_r[@]}") |"
echo "| peak staging (MiB) | - | $(mib "$s_pk") | $(mib "$t_pk") |"
echo "| archive (MiB) | - | $(mib "$s_sz") | $(mib "$t_sz") |"
echo
echo "all runs: runc checkpoint ${r_ck[*]} | restore ${r_rs[*]}"
echo "          staged dump ${s_d[*]} | restore ${s_r[*]}"
echo "          streamed dump ${t_d[*]} | restore ${t_r[*]}"
