package fault

import (
	"errors"
	"syscall"
	"testing"
)

func TestSteps(t *testing.T) {
	var none Injector
	if err := none.At(SinkPages); err != nil {
		t.Fatalf("nil injector failed: %v", err)
	}
	f := Steps(ArchiveFsync, ArchiveRename)
	for _, tc := range []struct {
		step string
		fail bool
	}{{ArchiveFsync, true}, {ArchiveRename, true}, {SinkPages, false}} {
		err := f.At(tc.step)
		if (err != nil) != tc.fail {
			t.Errorf("At(%s) = %v, want failure %v", tc.step, err, tc.fail)
		}
		if err != nil && (!errors.Is(err, ErrInjected) || !errors.Is(err, syscall.EIO)) {
			t.Errorf("At(%s) = %v, want ErrInjected and EIO", tc.step, err)
		}
	}
	if Steps() != nil {
		t.Error("Steps() with no step is not nil")
	}
}
