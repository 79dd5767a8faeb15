package checkpoint

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cedana/cedana/internal/proc"
	"golang.org/x/sys/unix"
)

// TestSnapshotTerminalInsideTree: `script` holds the master of a
// pseudo-terminal and runs its child on the slave, as tmux and screen do.
// The tree rooted at script is no shell job and has no external terminal;
// the child alone (its terminal's master now outside the tree) is one,
// with its terminal to hand over at restore.
func TestSnapshotTerminalInsideTree(t *testing.T) {
	script, err := exec.LookPath("script")
	if err != nil {
		t.Skip("skipping: script (util-linux) not installed")
	}
	cmd := exec.Command(script, "-q", "-f", "-c", "sleep 30", "/dev/null")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // no terminal of its own
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if tree, err := proc.Tree(cmd.Process.Pid); err == nil {
			for _, p := range tree {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
		_ = cmd.Wait()
	}()
	var child int
	deadline := time.Now().Add(10 * time.Second)
	for child == 0 {
		if tree, _ := proc.Tree(cmd.Process.Pid); len(tree) > 1 {
			if st, err := proc.ReadStat(tree[len(tree)-1]); err == nil && st.Comm == "sleep" && st.TTYNr != 0 {
				child = st.PID
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("script's child never got its terminal")
		}
		time.Sleep(10 * time.Millisecond)
	}

	whole, err := takeSnapshot(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if whole.shellJob || len(whole.ttys) > 0 {
		t.Errorf("script with its child: shell job %v, external terminals %v; want neither (reasons %q)", whole.shellJob, whole.ttys, whole.why)
	}
	if !strings.Contains(strings.Join(whole.why, "\n"), "inside the tree") {
		t.Errorf("no note that the terminal is inside the tree: %q", whole.why)
	}

	alone, err := snapshotOf(child, []int{child})
	if err != nil {
		t.Fatal(err)
	}
	if !alone.shellJob || len(alone.ttys) != 1 {
		t.Errorf("the child alone: shell job %v, external terminals %v; want a shell job with one terminal", alone.shellJob, alone.ttys)
	}
	if !strings.Contains(strings.Join(alone.why, "\n"), "outside the tree") {
		t.Errorf("the shell job is not explained: %q", alone.why)
	}
}

// TestSnapshotRefusesMPTCP: a tree holding a Multipath TCP socket is
// refused before CRIU, with ErrMPTCP (an ErrInvalidInput) naming the PID,
// the descriptor and the fix; DescribeTree reports it without refusing.
func TestSnapshotRefusesMPTCP(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, proc.IPProtoMPTCP)
	if err != nil {
		t.Skipf("skipping: this kernel cannot create an MPTCP socket: %v", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	self := os.Getpid()
	s, err := snapshotOf(self, []int{self})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.mptcp) != 1 {
		t.Fatalf("MPTCP sockets found: %q, want the one listener", s.mptcp)
	}
	err = mptcpError(s.mptcp)
	if !errors.Is(err, ErrMPTCP) || !errors.Is(err, ErrInvalidInput) {
		t.Errorf("refusal %v is not ErrMPTCP and ErrInvalidInput", err)
	}
	for _, want := range []string{"PID ", "fd ", "LISTEN 127.0.0.1:", "GODEBUG=multipathtcp=0", "still running"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal does not say %q: %v", want, err)
		}
	}
	tree, err := DescribeTree(self)
	if err != nil {
		t.Fatalf("DescribeTree refused: %v", err)
	}
	if len(tree.MPTCP) != 1 {
		t.Errorf("DescribeTree MPTCP = %q", tree.MPTCP)
	}
}
