package jobs

import (
	"errors"
	"testing"
)

func TestTransitions(t *testing.T) {
	cases := []struct {
		op    string
		from  State
		legal bool
	}{
		{"dump", Running, true},
		{"dump", Dumping, false},
		{"dump", Checkpointed, false},
		{"dump", Restoring, false},
		{"restore", Checkpointed, true},
		{"restore", Failed, true},
		{"restore", Running, false},
		{"restore", Restoring, false},
		{"restore", Dumping, false},
		{"kill", Running, true},
		{"kill", Dumping, false},
		{"kill", Killed, false},
		{"remove", Killed, true},
		{"remove", Failed, true},
		{"remove", Restoring, false},
		{"remove", Starting, false},
	}
	for _, c := range cases {
		err := check(c.op, c.from, "j1")
		if (err == nil) != c.legal {
			t.Errorf("%s from %s: err=%v, legal=%v", c.op, c.from, err, c.legal)
		}
		if err != nil && !errors.Is(err, ErrIllegalTransition) {
			t.Errorf("%s from %s: error does not wrap ErrIllegalTransition", c.op, c.from)
		}
	}
}
