//go:build linux && amd64

package inject

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// redZone is the stack below the stack pointer that x86-64 code may use
// without moving it; the scratch memory goes below it.
const redZone = 128

// runSyscall makes the stopped, traced pid execute one syscall
// instruction at its current instruction pointer, then puts back the
// instruction, the borrowed stack and the registers. Saved registers
// carry a system call interrupted by the stop (orig_rax, rax =
// -ERESTART…); while the injected call runs, orig_rax is -1 so that the
// kernel does not restart anything, and putting the registers back lets
// the interrupted call restart as it would have.
func runSyscall(pid int, nr uintptr, mem []byte, a0, a1 uintptr) (int64, error) {
	var saved unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &saved); err != nil {
		return 0, fmt.Errorf("read PID %d's registers: %w", pid, err)
	}
	scratch := (uintptr(saved.Rsp) - redZone - 256 - uintptr(len(mem))) &^ 15
	oldMem, err := peek(pid, scratch, len(mem))
	if err != nil {
		return 0, err
	}
	ip := uintptr(saved.Rip)
	oldCode, err := peek(pid, ip, 8)
	if err != nil {
		return 0, err
	}
	if err := poke(pid, scratch, mem); err != nil {
		return 0, err
	}
	defer poke(pid, scratch, oldMem)
	code := append([]byte{0x0f, 0x05}, oldCode[2:]...) // syscall
	if err := poke(pid, ip, code); err != nil {
		return 0, err
	}
	defer poke(pid, ip, oldCode)
	defer unix.PtraceSetRegs(pid, &saved)

	regs := saved
	regs.Orig_rax = ^uint64(0)
	regs.Rax, regs.Rdi, regs.Rsi, regs.Rdx = uint64(nr), uint64(a0), uint64(a1), uint64(scratch)
	if err := unix.PtraceSetRegs(pid, &regs); err != nil {
		return 0, fmt.Errorf("set PID %d's registers: %w", pid, err)
	}
	// A stop other than the step's trap (a group stop reported again, a
	// signal arriving) comes before the instruction ran: step again.
	var after unix.PtraceRegs
	for range 8 {
		if err := unix.PtraceSingleStep(pid); err != nil {
			return 0, fmt.Errorf("step PID %d: %w", pid, err)
		}
		if err := waitStop(pid); err != nil {
			return 0, err
		}
		if err := unix.PtraceGetRegs(pid, &after); err != nil {
			return 0, fmt.Errorf("read PID %d's registers: %w", pid, err)
		}
		if after.Rip != saved.Rip {
			break
		}
	}
	if after.Rip != saved.Rip+2 {
		return 0, fmt.Errorf("PID %d did not run the injected system call (stopped at %#x, not %#x)", pid, after.Rip, saved.Rip+2)
	}
	return int64(after.Rax), nil
}

// flockBytes is lk as the kernel reads it.
func flockBytes(lk *unix.Flock_t) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(lk)), unsafe.Sizeof(*lk))
}
