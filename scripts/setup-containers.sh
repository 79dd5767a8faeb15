#!/usr/bin/env bash
# scripts/setup-containers.sh -- the container runtimes the container tests and benchmarks
# need, from Debian: docker.io (dockerd 20.10, containerd, and iptables by dependency), runc
# and busybox-static (the tests build their image and bundle rootfs from /bin/busybox: no
# registry is reachable). Called by scripts/setup.sh; idempotent.
#
# No engine is started or configured here: the tests start their own dockerd (experimental
# mode, private data root and socket) when none runs, and stop it afterwards.
#
# Environment: CEDANA_SKIP_PACKAGES=1 skips the installation (checks only).
set -euo pipefail

PACKAGES="docker.io runc busybox-static"

say()  { printf '[setup-containers] %s\n' "$*"; }
die()  { printf '[setup-containers] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
export DEBIAN_FRONTEND=noninteractive

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

missing=()
for p in $PACKAGES; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ] && [ "${CEDANA_SKIP_PACKAGES:-0}" != 1 ]; then
  say "installing: ${missing[*]}"
  apt-get update -qq || die "apt-get update failed; cannot install: ${missing[*]}"
  log=$(mktemp)
  # policy-rc.d refuses to start services in these machines; dpkg still succeeds.
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    die "apt-get install failed for: ${missing[*]} (apt's reason is above)"
  fi
  rm -f "$log"
fi

dockerd=$(command -v dockerd || true)
[ -n "$dockerd" ] || [ ! -x /usr/sbin/dockerd ] || dockerd=/usr/sbin/dockerd
[ -n "$dockerd" ] || die "dockerd not found after installing docker.io"
command -v runc >/dev/null || die "runc not found after installing runc"
[ -x /bin/busybox ] || die "/bin/busybox not found after installing busybox-static"
if command -v file >/dev/null && ! file -L /bin/busybox | grep -q 'statically linked'; then
  die "/bin/busybox is not statically linked (the busybox package replaced busybox-static?); the test image needs the static one"
fi
say "dockerd: $("$dockerd" --version)"
say "runc: $(runc --version | head -n1)"
say "busybox: $(/bin/busybox | head -n1)"
