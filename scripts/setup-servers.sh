#!/usr/bin/env bash
# scripts/setup-servers.sh -- the real servers the storage tests run against, built once per
# pinned version into a cache OUTSIDE the clone, so CI and later clones reuse them:
#
#   versitygw   v1.8.0   S3 gateway over a POSIX directory (Apache-2.0), for the s3 backend
#   nats-server v2.15.3  NATS with JetStream (Apache-2.0), for the jetstream backend
#
# Each is built with `go install` into a temporary GOBIN and then moved into place with one
# rename, so a half-built binary never appears under its final name. A binary already in the
# cache that runs is kept. Called by scripts/setup.sh; idempotent; can also be run alone.
#
# The tests (internal/storage/servers_test.go) look for $CEDANA_SERVER_CACHE/<name>-<version>.
#
# Environment (all optional):
#   CEDANA_SERVER_CACHE  where the binaries go (default /var/cache/cedana/bin)
#   GO                   the go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

# name version package -- keep in step with internal/storage/servers_test.go.
SERVERS="
versitygw   v1.8.0  github.com/versity/versitygw/cmd/versitygw
nats-server v2.15.3 github.com/nats-io/nats-server/v2
"

CACHE="${CEDANA_SERVER_CACHE:-/var/cache/cedana/bin}"

say() { printf '[setup-servers] %s\n' "$*"; }
die() { printf '[setup-servers] ERROR: %s\n' "$*" >&2; exit 1; }

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[ -x "$GO" ] || die "no Go toolchain found (set GO=/path/to/go); it builds the test servers"

mkdir -p "$CACHE" || die "cannot create $CACHE (set CEDANA_SERVER_CACHE)"
# One builder at a time per cache (setup.sh holds its own lock; this one also covers a
# direct run).
exec 8>"$CACHE/.lock"
if command -v flock >/dev/null; then flock 8; fi

TMP=""
trap '[ -z "$TMP" ] || rm -rf "$TMP"' EXIT

# works BIN: the binary starts and prints a version.
works() {
  case "$(basename "$1")" in
    versitygw-*) "$1" --version >/dev/null 2>&1 ;;
    nats-server-*) "$1" --version >/dev/null 2>&1 ;;
  esac
}

while read -r name version pkg; do
  [ -n "$name" ] || continue
  target="$CACHE/$name-$version"
  if [ -x "$target" ] && works "$target"; then
    say "$name $version: $target (cached)"
    continue
  fi
  TMP=$(mktemp -d /tmp/cedana-servers.XXXXXX)
  say "$name $version: building $pkg@$version (go install; a few minutes on 2 cores)"
  t0=$SECONDS
  if ! GOBIN="$TMP/bin" GOFLAGS=-buildvcs=false CGO_ENABLED=0 "$GO" install -trimpath "$pkg@$version" >"$TMP/build.log" 2>&1; then
    sed 's/^/    /' "$TMP/build.log" >&2
    die "building $name $version failed (the Go module proxy must be reachable; go's reason is above)"
  fi
  built="$TMP/bin/$name"
  [ -x "$built" ] || die "go install produced no $name binary in $TMP/bin"
  works "$built" || die "the freshly built $name does not run: $("$built" --version 2>&1 | tail -n2)"
  # Same filesystem as the target, then one atomic rename.
  cp "$built" "$target.tmp.$$"
  chmod 0755 "$target.tmp.$$"
  mv -f "$target.tmp.$$" "$target"
  rm -rf "$TMP"; TMP=""
  say "$name $version: built into $target in $((SECONDS - t0)) s"
done <<<"$SERVERS"
