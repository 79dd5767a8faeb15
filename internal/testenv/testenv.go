// Package testenv decides what a test does when something it needs from
// the machine is missing (root, CRIU, a program, a filesystem feature):
// outside CI it skips with the reason, which `make test` lists at its end;
// in CI (the CI environment variable set, as .ci/run does) everything is
// installed, so a missing prerequisite is a failure, never a silent skip.
package testenv

import (
	"os"
	"testing"
)

// InCI reports whether the tests run in CI: CI is set to anything but
// "", "0" or "false".
func InCI() bool {
	switch os.Getenv("CI") {
	case "", "0", "false":
		return false
	}
	return true
}

// Missing ends the test because why (what is missing, and how to get
// it) is not there: a skip with that reason, or in CI a failure.
func Missing(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing in CI: %s", why)
		return // only reached with a fake testing.TB
	}
	t.Skipf("skipping: %s", why)
}

// RequireRoot ends the test (see Missing) unless it runs as root.
func RequireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root ("+what+")")
	}
}
