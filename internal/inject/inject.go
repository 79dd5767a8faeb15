// Package inject makes a stopped process run one system call of Cedana's
// choosing, as if its own code had made it, through ptrace — the way
// CRIU's own parasite code runs in a dumped process, reduced to a single
// instruction.
//
// Cedana needs it for what CRIU leaves out of a restore: CRIU re-takes a
// process's POSIX locks before it maps the process's files, and the
// mapping closes a descriptor of a file the process has locked, which
// drops every POSIX lock the process holds on that file (fcntl(2): "If a
// process closes any file descriptor referring to a file, then all of the
// process's locks on that file are released"). SQLite in WAL mode holds
// its locks on the -shm file it also maps, so without them two restored
// writers write at once and a committed row is lost.
package inject

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrUnsupported means this architecture has no injection.
var ErrUnsupported = errors.New("injecting a system call is not supported on " + runtime.GOARCH)

// SetPOSIXLock takes the POSIX record lock lk (fcntl F_SETLK) in process
// pid on its descriptor fd. The process must be stopped (SIGSTOP) and
// stays stopped. It fails, leaving the process as it was, when the lock
// is held by another process or the process cannot be traced.
func SetPOSIXLock(pid, fd int, lk unix.Flock_t) error {
	ret, err := syscallIn(pid, unix.SYS_FCNTL, flockBytes(&lk), uintptr(fd), unix.F_SETLK)
	if err != nil {
		return err
	}
	if ret < 0 {
		return fmt.Errorf("fcntl(F_SETLK) in PID %d: %w", pid, unix.Errno(-ret))
	}
	return nil
}

// syscallIn runs system call nr in the stopped process pid with arguments
// a0, a1 and a pointer to a copy of mem (in the process's memory) as its
// third argument, and returns its raw result (a negative errno on
// failure). Everything it changes — registers, the instruction it
// replaces, the stack it borrows — is put back before it returns.
func syscallIn(pid int, nr uintptr, mem []byte, a0, a1 uintptr) (int64, error) {
	runtime.LockOSThread() // ptrace requests come from the tracing thread
	defer runtime.UnlockOSThread()
	if err := unix.PtraceSeize(pid); err != nil {
		return 0, fmt.Errorf("trace PID %d: %w", pid, err)
	}
	attached := true
	defer func() {
		if attached {
			detachStopped(pid)
		}
	}()
	if err := unix.PtraceInterrupt(pid); err != nil {
		return 0, fmt.Errorf("interrupt PID %d: %w", pid, err)
	}
	if err := waitStop(pid); err != nil {
		return 0, err
	}
	ret, err := runSyscall(pid, nr, mem, a0, a1)
	attached = false
	if derr := detachStopped(pid); derr != nil && err == nil {
		err = derr
	}
	return ret, err
}

// waitStop waits until the traced pid is in a ptrace stop.
func waitStop(pid int) error {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for PID %d to stop: %w", pid, err)
		}
		if ws.Exited() || ws.Signaled() {
			return fmt.Errorf("PID %d ended while being traced", pid)
		}
		if ws.Stopped() {
			return nil
		}
	}
}

// detachStopped lets pid go, stopped again (SIGSTOP), as it was found.
func detachStopped(pid int) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_DETACH, uintptr(pid), 0, uintptr(unix.SIGSTOP), 0, 0)
	if e != 0 {
		return fmt.Errorf("detach from PID %d: %w", pid, e)
	}
	return nil
}

// peek and poke read and write whole words of pid's memory.
func peek(pid int, addr uintptr, n int) ([]byte, error) {
	buf := make([]byte, n)
	if _, err := unix.PtracePeekData(pid, addr, buf); err != nil {
		return nil, fmt.Errorf("read PID %d's memory at %#x: %w", pid, addr, err)
	}
	return buf, nil
}

func poke(pid int, addr uintptr, data []byte) error {
	if _, err := unix.PtracePokeData(pid, addr, data); err != nil {
		return fmt.Errorf("write PID %d's memory at %#x: %w", pid, addr, err)
	}
	return nil
}
