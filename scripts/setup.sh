#!/usr/bin/env bash
# scripts/setup.sh -- what `make setup` runs: installs what Cedana's build and tests need.
#
#  1. System packages (Debian, plain `apt-get install`), only those missing.
#  2. CRIU >= 4.2. Kernels >= 6.16 need it (older CRIU can't dump processes holding
#     IPv4/IPv6 sockets), and Debian bookworm only has 3.17. If the `criu` found on PATH is
#     recent enough and `criu check` passes, it is used as is. Otherwise CRIU and the
#     libraries it needs (including its own glibc) are downloaded from a newer Debian suite
#     (forky, then sid) through a PRIVATE apt configuration -- /etc/apt and the system's
#     packages are never changed -- unpacked into $CEDANA_CRIU_PREFIX and run through that
#     prefix's own dynamic loader by a small wrapper installed as /usr/local/sbin/criu.
#
# Idempotent: when everything is present it only runs `criu --version` and `criu check`.
#
# Environment (all optional):
#   CEDANA_CRIU_PREFIX   where the private CRIU goes        (default /opt/cedana/criu)
#   CEDANA_CRIU_WRAPPER  path of the `criu` wrapper         (default /usr/local/sbin/criu)
#   CEDANA_CRIU_SUITES   Debian suites to try, in order     (default "forky sid")
#   CEDANA_DEBIAN_MIRROR Debian mirror URI (default: the one in /etc/apt/sources.list*)
#   CEDANA_SETUP_FORCE=1 (re)install the private CRIU even if a working criu exists
#   CEDANA_SKIP_PACKAGES=1 skip step 1
set -euo pipefail

# Debian packages the build and the test suite need from the system.
# (`script` is in bsdutils, `setsid` in util-linux. No nftables/iptables: CRIU's
# `--network-lock nftables` uses libnftables, which comes with the private CRIU.)
SYSTEM_PACKAGES="redis-server python3 procps iproute2 zstd util-linux bsdutils"
# The compatibility suite (test/integration/compat_test.go): a terminal multiplexer, a
# second interpreter and a JVM. default-jre-headless is the big one (~44 MB of .debs,
# ~190 MB installed; once per machine); it is skipped when a `java` is already on PATH.
SYSTEM_PACKAGES="$SYSTEM_PACKAGES tmux perl default-jre-headless"

CRIU_MIN_VERSION="4.2"
# Versions verified on these machines; used while the suite still has them, otherwise the
# suite's current version is taken (as long as criu stays >= CRIU_MIN_VERSION).
CRIU_PINS="criu=4.2.1-1 libcompel1=4.2.1-1"
# Packages unpacked into the prefix: criu plus these, plus whatever `apt-cache depends
# --recurse criu` adds (so a changed dependency set is followed automatically).
CRIU_PACKAGES="criu libcompel1 libc6 libbsd0 libmd0 libgnutls30t64 libnet9 libnftables1
  libnl-3-200 libprotobuf-c1 libuuid1 libmnl0 libnftnl11 libjansson4 libxtables12 libgmp10
  libp11-kit0 libidn2-0 libunistring5 libtasn1-6 libnettle8t64 libhogweed6t64 libffi8"

PREFIX="${CEDANA_CRIU_PREFIX:-/opt/cedana/criu}"
WRAPPER="${CEDANA_CRIU_WRAPPER:-/usr/local/sbin/criu}"
SUITES="${CEDANA_CRIU_SUITES:-forky sid}"
FORCE="${CEDANA_SETUP_FORCE:-0}"
ARCH_TRIPLET="x86_64-linux-gnu"

say()  { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }
die()  { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and $WRAPPER); try: sudo make setup"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported (this is $(uname -m))"
command -v apt-get >/dev/null && command -v dpkg >/dev/null \
  || die "needs a Debian-based system (apt-get and dpkg)"

# One setup at a time.
exec 9>/run/cedana-setup.lock
if command -v flock >/dev/null; then flock 9; fi

export DEBIAN_FRONTEND=noninteractive

# ----------------------------------------------------------------------------------------
# 1. System packages
# ----------------------------------------------------------------------------------------
pkg_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

install_system_packages() {
  local p missing=()
  for p in $SYSTEM_PACKAGES; do
    case "$p" in
      python3) command -v python3 >/dev/null && continue ;;
      default-jre-headless) command -v java >/dev/null && continue ;;
    esac
    pkg_installed "$p" || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    say "system packages present: $SYSTEM_PACKAGES"
    return
  fi
  say "installing system packages: ${missing[*]}"
  apt-get update -qq || die "apt-get update failed (see above); cannot install: ${missing[*]}"
  local log
  log=$(mktemp)
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    for p in "${missing[@]}"; do
      apt-cache show "$p" >/dev/null 2>&1 || warn "package '$p' is not known to apt (not in any configured suite)"
    done
    die "apt-get install failed for: ${missing[*]} (apt's reason is above)"
  fi
  rm -f "$log"
  for p in "${missing[@]}"; do
    pkg_installed "$p" || die "package '$p' still not installed after apt-get install"
  done
}

# ----------------------------------------------------------------------------------------
# 2. CRIU
# ----------------------------------------------------------------------------------------
criu_version() { # BIN -> prints e.g. 4.2.1, or nothing
  "$1" --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9.]*\).*/\1/p' | head -n1
}

# criu_ok BIN: true if BIN is CRIU >= CRIU_MIN_VERSION and `criu check` passes.
# (`Can't setup RLIMIT_NOFILE for self` is logged on every run where root lacks
# CAP_SYS_RESOURCE; it is harmless and does not fail the check.)
criu_ok() {
  local bin="$1" v
  [ -x "$bin" ] || return 1
  v=$(criu_version "$bin")
  [ -n "$v" ] || return 1
  dpkg --compare-versions "$v" ge "$CRIU_MIN_VERSION" || return 1
  "$bin" check >/dev/null 2>&1
}

# The Debian archive mirror this machine already uses (same host, other suite).
find_debian_mirror() {
  if [ -n "${CEDANA_DEBIAN_MIRROR:-}" ]; then echo "$CEDANA_DEBIAN_MIRROR"; return; fi
  local f uris=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    # deb [opts] URI suite components...
    while read -r u; do uris+=("$u"); done < <(
      sed -n -e 's/#.*//' -e 's/^[[:space:]]*deb[[:space:]]\+//p' "$f" \
        | sed -e 's/^\[[^]]*\][[:space:]]*//' | awk '{print $1}')
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    # deb822: skip stanzas with "Enabled: no" or without Types: deb
    while read -r u; do uris+=("$u"); done < <(awk '
      function flush() { if (deb && en) for (i = 1; i <= n; i++) print u[i]; deb = 0; en = 1; n = 0 }
      BEGIN { en = 1 }
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "enabled:" { if (tolower($2) == "no") en = 0 }
      tolower($1) == "uris:" { for (i = 2; i <= NF; i++) u[++n] = $i }
      END { flush() }' "$f")
  done
  local u
  for u in "${uris[@]}"; do
    u="${u%/}"
    case "$u" in
      *security*|*ports*|*backports*) continue ;;
      http://*/debian|https://*/debian) echo "$u"; return ;;
    esac
  done
  return 1
}

CRIU_TMP="" NEW_PREFIX=""
cleanup() {
  if [ -n "$CRIU_TMP" ]; then rm -rf "$CRIU_TMP"; fi
  if [ -n "$NEW_PREFIX" ]; then rm -rf "$NEW_PREFIX"; fi
}
trap cleanup EXIT

install_private_criu() {
  local t0=$SECONDS mirror keyring suite opts chosen="" cand
  mirror=$(find_debian_mirror) \
    || die "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d (set CEDANA_DEBIAN_MIRROR)"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  CRIU_TMP=$(mktemp -d /tmp/cedana-criu.XXXXXX)
  mkdir -p "$CRIU_TMP"/{lists/partial,cache/archives/partial,debs}
  : >"$CRIU_TMP/status" # an empty dpkg status: the private apt ignores what the system has
  opts=(
    -o "Dir::Etc::SourceList=$CRIU_TMP/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o "Dir::State::Lists=$CRIU_TMP/lists" -o "Dir::Cache=$CRIU_TMP/cache"
    -o "Dir::State::status=$CRIU_TMP/status" -o APT::Sandbox::User=root
    -o Acquire::Languages=none -o Acquire::Retries=3
    # Debian's docker images disable apt's binary cache; without it each apt-cache
    # call re-parses the whole index (~1 s).
    -o Dir::Cache::pkgcache=pkgcache.bin -o Dir::Cache::srcpkgcache=srcpkgcache.bin
  )
  local tgt
  for tgt in DEP-11 DEP-11-icons DEP-11-icons-small DEP-11-icons-large DEP-11-icons-hidpi; do
    opts+=(-o "Acquire::IndexTargets::deb::$tgt::DefaultEnabled=false")
  done

  for suite in $SUITES; do
    if [ -r "$keyring" ]; then
      echo "deb [signed-by=$keyring] $mirror $suite main" >"$CRIU_TMP/sources.list"
    else
      echo "deb $mirror $suite main" >"$CRIU_TMP/sources.list"
    fi
    say "fetching the package index of Debian '$suite' from $mirror (private apt state in $CRIU_TMP)"
    rm -rf "$CRIU_TMP/lists"; mkdir -p "$CRIU_TMP/lists/partial"
    if ! apt-get "${opts[@]}" -q update >"$CRIU_TMP/update.log" 2>&1 \
       || grep -qE '^(W|E): ' "$CRIU_TMP/update.log"; then
      sed 's/^/    /' "$CRIU_TMP/update.log" >&2
      warn "could not use Debian '$suite' from $mirror (apt's reason is above)"
      continue
    fi
    cand=$(apt-cache "${opts[@]}" policy criu 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
      warn "Debian '$suite' has no criu package"; continue
    fi
    if ! dpkg --compare-versions "$cand" ge "$CRIU_MIN_VERSION"; then
      warn "Debian '$suite' has criu $cand, older than $CRIU_MIN_VERSION"; continue
    fi
    chosen=$suite; break
  done
  [ -n "$chosen" ] || die "no CRIU >= $CRIU_MIN_VERSION could be fetched from $mirror (tried suites: $SUITES)"

  # The package set: the known list + criu's recursive dependencies in that suite.
  local pkgs p deps
  deps=$(apt-cache "${opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
           --no-breaks --no-replaces --no-enhances criu 2>/dev/null | grep -v '^[ <]' || true)
  pkgs=$(printf '%s\n' $CRIU_PACKAGES $deps | sort -u)

  # Pinned versions if the suite still has all of them (criu and libcompel1 must match),
  # otherwise the suite's current versions.
  local specs=() pin use_pins=1
  for pin in $CRIU_PINS; do
    if ! apt-cache "${opts[@]}" madison "${pin%%=*}" 2>/dev/null \
         | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep -qxF "${pin#*=}"; then
      say "pinned $pin is gone from Debian '$chosen'; taking its current versions (criu $cand)"
      use_pins=0
    fi
  done
  for p in $pkgs; do
    if ! apt-cache "${opts[@]}" show "$p/$chosen" >/dev/null 2>&1; then
      # A name from CRIU_PACKAGES that the suite dropped; criu's own dependencies are
      # listed by apt, and the `ld.so --list` check below catches anything still missing.
      warn "package '$p' is not in Debian '$chosen' at $mirror; skipping it"
      continue
    fi
    pin=""
    if [ "$use_pins" = 1 ]; then
      pin=$(printf '%s\n' $CRIU_PINS | grep "^$p=" || true)
    fi
    specs+=("${pin:-$p/$chosen}")
  done

  say "downloading ${#specs[@]} packages from Debian '$chosen': ${specs[*]}"
  if ! (cd "$CRIU_TMP/debs" && apt-get "${opts[@]}" -q download "${specs[@]}") >"$CRIU_TMP/download.log" 2>&1; then
    sed 's/^/    /' "$CRIU_TMP/download.log" >&2
    die "downloading CRIU's packages from $mirror ($chosen) failed (apt's reason is above)"
  fi

  # Unpack into a fresh directory next to the prefix, check it, then swap it in.
  local new="$PREFIX.new.$$" deb
  NEW_PREFIX="$new"
  rm -rf "$new"; mkdir -p "$new"
  for deb in "$CRIU_TMP"/debs/*.deb; do
    dpkg -x "$deb" "$new" || die "could not unpack $(basename "$deb")"
  done
  ls "$CRIU_TMP"/debs/*.deb | xargs -n1 basename | sed 's/\.deb$//' >"$new/.cedana-packages"
  local loader=""
  for loader in "$new/usr/lib/$ARCH_TRIPLET/ld-linux-x86-64.so.2" "$new/lib/$ARCH_TRIPLET/ld-linux-x86-64.so.2" \
                "$new/usr/lib64/ld-linux-x86-64.so.2" "$new/lib64/ld-linux-x86-64.so.2"; do
    [ -e "$loader" ] && break
  done
  [ -e "$loader" ] || die "the unpacked libc6 has no ld-linux-x86-64.so.2"
  [ -x "$new/usr/sbin/criu" ] || die "the unpacked criu package has no usr/sbin/criu"
  local libpath="$new/usr/lib/$ARCH_TRIPLET:$new/lib/$ARCH_TRIPLET"
  # Every library must resolve inside the prefix, never to the system's older ones.
  local list bad
  list=$("$loader" --library-path "$libpath" --list "$new/usr/sbin/criu" 2>&1) \
    || { echo "$list" >&2; die "the private CRIU's libraries do not load (see above)"; }
  bad=$(echo "$list" | grep -v 'linux-vdso' | grep -v -F "$new/" || true)
  [ -z "$bad" ] || { echo "$bad" >&2; die "libraries missing from the private CRIU (add their packages to CRIU_PACKAGES): see above"; }

  write_wrapper "$new" "${loader#"$new"}" "$CRIU_TMP/criu.test"
  local v; v=$(criu_version "$CRIU_TMP/criu.test")
  [ -n "$v" ] || die "the private CRIU does not run: $("$CRIU_TMP/criu.test" --version 2>&1 | tail -n3)"
  if ! "$CRIU_TMP/criu.test" check >"$CRIU_TMP/check.log" 2>&1; then
    sed 's/^/    /' "$CRIU_TMP/check.log" >&2
    die "the private CRIU $v was installed but \`criu check\` fails on this kernel (see above)"
  fi

  mkdir -p "$(dirname "$PREFIX")" "$(dirname "$WRAPPER")"
  rm -rf "$PREFIX.old"
  [ -e "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
  mv "$new" "$PREFIX"
  NEW_PREFIX=""
  rm -rf "$PREFIX.old"
  write_wrapper "$PREFIX" "${loader#"$new"}" "$WRAPPER.tmp.$$"
  mv -f "$WRAPPER.tmp.$$" "$WRAPPER"
  # The kernel-feature cache Cedana's daemon made for the old CRIU (a link into its
  # tmpfs, internal/criu/kdat.go) goes; the next daemon start makes one for this CRIU.
  rm -f /run/criu.kdat
  say "installed CRIU $v from Debian '$chosen' into $PREFIX ($(du -sh "$PREFIX" | cut -f1)), wrapper $WRAPPER, in $((SECONDS - t0)) s"
}

# write_wrapper PREFIX LOADER_REL_PATH OUT
write_wrapper() {
  local p="$1" ld="$2" out="$3"
  cat >"$out" <<EOF
#!/bin/sh
# Generated by Cedana's scripts/setup.sh: runs the private CRIU in $p
# through its own glibc, leaving the system's libraries alone. exec keeps the pid and
# every inherited fd (go-criu runs \`criu swrk <fd>\`).
exec "$p$ld" --library-path "$p/usr/lib/$ARCH_TRIPLET:$p/lib/$ARCH_TRIPLET" "$p/usr/sbin/criu" "\$@"
EOF
  chmod 0755 "$out"
}

setup_criu() {
  local c
  if [ "$FORCE" != 1 ]; then
    if criu_ok "$WRAPPER"; then
      CRIU_BIN="$WRAPPER"; say "CRIU $(criu_version "$WRAPPER") at $WRAPPER works; nothing to do"; return
    fi
    c=$(command -v criu || true)
    if [ -n "$c" ] && [ "$c" != "$WRAPPER" ] && criu_ok "$c"; then
      CRIU_BIN="$c"; say "using the criu on PATH: $c (CRIU $(criu_version "$c"), \`criu check\` passes)"; return
    fi
    if [ -n "$c" ] && [ "$c" != "$WRAPPER" ]; then
      say "the criu on PATH ($c, version $(criu_version "$c" || true)) is older than $CRIU_MIN_VERSION or fails \`criu check\`; installing a private CRIU"
    fi
  fi
  install_private_criu
  CRIU_BIN="$WRAPPER"
}

report_criu() {
  local out f c
  say "criu --version: $("$CRIU_BIN" --version | head -n1)"
  out=$("$CRIU_BIN" check 2>&1) || { echo "$out" >&2; die "\`criu check\` fails"; }
  # The RLIMIT_NOFILE line is logged on every run here (no CAP_SYS_RESOURCE) and is harmless.
  say "criu check: $(echo "$out" | grep -v "RLIMIT_NOFILE for self" | tr '\n' ' ')"
  # Reported only: without soft-dirty (CONFIG_MEM_SOFT_DIRTY) there is no pre-dump.
  for f in mem_dirty_track uffd uffd-noncoop network_lock_nftables; do
    if out=$("$CRIU_BIN" check --feature "$f" 2>&1); then
      say "criu check --feature $f: supported"
    else
      say "criu check --feature $f: NOT supported $(echo "$out" | grep -v "RLIMIT_NOFILE for self" | sed 's/^[A-Za-z]* *([^)]*): *//' | tr '\n' ' ')"
    fi
  done
  c=$(command -v criu || true)
  if [ "$CRIU_BIN" = "$WRAPPER" ] && [ "$c" != "$WRAPPER" ]; then
    warn "\`criu\` on PATH is ${c:-nothing}, not $WRAPPER: put $(dirname "$WRAPPER") first in PATH"
  fi
}

CRIU_BIN=""
if [ "${CEDANA_SKIP_PACKAGES:-0}" != 1 ]; then install_system_packages; fi
setup_criu
report_criu
# Lazy (post-copy) migration: CRIU's page server grows its pipes to 4 MiB, which
# fs.pipe-max-size (1 MiB by default) forbids without CAP_SYS_RESOURCE.
if [ "$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)" -lt 4194304 ]; then
  if echo 4194304 > /proc/sys/fs/pipe-max-size 2>/dev/null; then
    say "fs.pipe-max-size raised to 4194304 (lazy migration)"
  else
    warn "could not raise fs.pipe-max-size to 4194304: lazy migration will be refused"
  fi
fi
bash "$(dirname "${BASH_SOURCE[0]}")/setup-containers.sh"
bash "$(dirname "${BASH_SOURCE[0]}")/setup-servers.sh"
say "done"
