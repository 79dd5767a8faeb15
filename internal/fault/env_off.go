//go:build !faults

package fault

// FromEnv returns nil: only binaries built with -tags faults inject
// failures.
func FromEnv() Injector { return nil }
