package proc

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// IPProtoMPTCP is the protocol number of Multipath TCP sockets
// (socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)), which CRIU cannot dump
// ("Unsupported proto 262"). Go ≥ 1.24 listens with it by default.
const IPProtoMPTCP = unix.IPPROTO_MPTCP

// ErrCannotInspect means a socket's protocol could not be read: the
// kernel lacks pidfd_getfd (Linux < 5.6) or the caller may not ptrace
// the process.
var ErrCannotInspect = errors.New("cannot inspect the sockets of the process")

// MPTCPSockets returns which of pid's socket descriptors (from fds) are
// Multipath TCP sockets. /proc/PID/net/tcp lists an MPTCP socket like a
// TCP one, under the same inode, so the protocol is read from the socket
// itself: each candidate is duplicated into this process with
// pidfd_getfd, asked for SO_PROTOCOL, and closed (the process's own
// descriptor is untouched). Unix sockets (known from /proc/PID/net/unix,
// in socks) are not candidates.
func MPTCPSockets(pid int, fds []FD, socks map[uint64]Socket) ([]FD, error) {
	var cand []FD
	for _, fd := range fds {
		if fd.Type != "socket" {
			continue
		}
		if so, ok := socks[fd.Inode]; ok && so.Family == "unix" {
			continue
		}
		cand = append(cand, fd)
	}
	if len(cand) == 0 {
		return nil, nil
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("%w: PID %d", ErrNoProcess, pid)
		}
		return nil, fmt.Errorf("%w %d: pidfd_open: %v", ErrCannotInspect, pid, err)
	}
	defer unix.Close(pidfd)
	var out []FD
	for _, fd := range cand {
		proto, err := socketProtocol(pidfd, fd.Num)
		if err != nil {
			if errors.Is(err, unix.EBADF) {
				continue // closed meanwhile
			}
			return out, fmt.Errorf("%w %d (fd %d): %v", ErrCannotInspect, pid, fd.Num, err)
		}
		if proto == IPProtoMPTCP {
			out = append(out, fd)
		}
	}
	return out, nil
}

// socketProtocol reads SO_PROTOCOL of descriptor n of the process pidfd
// refers to, through a duplicate of it.
func socketProtocol(pidfd, n int) (int, error) {
	dup, err := unix.PidfdGetfd(pidfd, n, 0)
	if err != nil {
		return 0, fmt.Errorf("pidfd_getfd: %w", err)
	}
	defer unix.Close(dup)
	proto, err := unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return 0, fmt.Errorf("getsockopt SO_PROTOCOL: %w", err)
	}
	return proto, nil
}
