#!/usr/bin/env bash
# The test part of `make test`: the whole suite, then short fuzz runs,
# then the list of every test that skipped and why.
#
# go test runs with -json; its events are saved to bin/test-events.json
# and scripts/testreport prints what plain `go test` would (each package's
# ok/FAIL line, build errors, the output of failed tests). The exit status
# is go test's (and the fuzz runs'), whatever the pipe: a failure anywhere
# fails `make test`. Under .ci/run (CI=true) a missing prerequisite is a
# failure, not a skip (internal/testenv).
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
TEST_FUZZTIME=${TEST_FUZZTIME:-5s} # 0: no fuzzing
TEST_PKGS=${TEST_PKGS:-./...}
mkdir -p bin
events=bin/test-events.json
report=bin/testreport
$GO build -o "$report" ./scripts/testreport || exit 1

# shellcheck disable=SC2086 # TEST_PKGS is a list
$GO test -count=1 -timeout 20m -json $TEST_PKGS | tee "$events" | "$report"
st=("${PIPESTATUS[@]}")
test_rc=0
if [ "${st[0]}" != 0 ] || [ "${st[2]}" != 0 ]; then
  test_rc=1
fi

fuzz_rc=0 fuzz=ok
if [ "$TEST_FUZZTIME" = 0 ]; then
  echo "make test: TEST_FUZZTIME=0, fuzzing not started"; fuzz="not run"
elif [ $test_rc = 0 ]; then
  GO=$GO FUZZTIME=$TEST_FUZZTIME bash scripts/fuzz.sh || { fuzz_rc=1; fuzz=failed; }
else
  echo "make test: tests failed; fuzzing not started"; fuzz="not run"
fi

echo
"$report" -skips "$events"
if [ -n "${CI:-}" ] && [ "${CI}" != false ] && [ "${CI}" != 0 ]; then
  echo "(CI=$CI: a missing prerequisite fails instead of skipping)"
fi
if [ $test_rc != 0 ] || [ $fuzz_rc != 0 ]; then
  echo "make test: FAIL (tests: $([ $test_rc = 0 ] && echo ok || echo failed), fuzz: $fuzz)"
  exit 1
fi
echo "make test: ok"
