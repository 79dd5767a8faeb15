package criu

import (
	"os"
	"os/exec"
	"reflect"
	"syscall"
	"time"
	"unsafe"

	gocriu "github.com/checkpoint-restore/go-criu/v8"
)

// CPU time of CRIU's own process, for the daemon's report of its overhead
// per checkpoint (the daemon's CPU as a fraction of CRIU's, a ratio that
// holds on a busy machine where wall times do not).

// cpuOf returns the user plus system CPU time of an exited process and of
// the children it waited for, or 0 when unknown.
func cpuOf(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok || ru == nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// swrkCmd returns the `criu swrk` command go-criu started in Prepare, or
// nil. go-criu keeps it unexported and throws its rusage away when it
// reaps it in Cleanup; reading the field is the only way to the CPU time
// CRIU used. TestSwrkCmd fails if a go-criu upgrade renames it.
func swrkCmd(g *gocriu.Criu) *exec.Cmd {
	v := reflect.ValueOf(g).Elem().FieldByName("swrkCmd")
	if !v.IsValid() || v.Type() != reflect.TypeOf((*exec.Cmd)(nil)) {
		return nil
	}
	return *(**exec.Cmd)(unsafe.Pointer(v.UnsafeAddr()))
}
