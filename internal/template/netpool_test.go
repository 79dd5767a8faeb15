package template

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// requireNetAdmin skips unless the test runs as root with iproute2: the
// pool makes real namespaces, veths and a bridge.
func requireNetAdmin(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs `ip` (iproute2)")
	}
}

// waitPooled waits until n's pool holds want namespaces.
func waitPooled(t *testing.T, n *Network, want int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if n.Pooled() == want {
			return
		}
	}
	t.Fatalf("the pool holds %d namespaces, want %d (last error: %v)", n.Pooled(), want, n.FillErr())
}

// ours lists the pool namespaces of n that exist.
func ours(t *testing.T, n *Network) []string {
	t.Helper()
	es, err := os.ReadDir(netnsDir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if strings.HasPrefix(e.Name(), n.poolPrefix()) {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestNetnsPool(t *testing.T) {
	requireNetAdmin(t)
	n := NewNetwork(t.TempDir())
	t.Cleanup(n.Close)
	n.SetPoolSize(2)
	if got := ours(t, n); len(got) != 0 {
		t.Fatalf("namespaces before the first Fill: %v", got)
	}
	n.Fill()
	waitPooled(t, n, 2)

	// A run holds the pool: clones take the ready namespaces, the third
	// makes its own, and nothing is refilled meanwhile.
	release := n.Hold()
	seen := map[string]bool{}
	var as []*Attachment
	for i := range 3 {
		a, err := n.Attach(fmt.Sprintf("job-%s-%d", n.key, i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Detach(a) })
		as = append(as, a)
		pooled := strings.HasPrefix(a.NS, n.poolPrefix())
		if pooled != (i < 2) {
			t.Fatalf("clone %d got namespace %s (from the pool: %v)", i, a.NS, pooled)
		}
		if seen[a.NS] || seen[a.Address] || seen[a.HostVeth] {
			t.Fatalf("namespace, address or veth handed out twice: %+v", a)
		}
		seen[a.NS], seen[a.Address], seen[a.HostVeth] = true, true, true
		// Ready to use: the address is set inside, the host end is up on
		// the bridge.
		out, err := exec.Command("ip", "-n", a.NS, "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
		if err != nil || !strings.Contains(string(out), a.Address+"/24") {
			t.Fatalf("%s: eth0 has not %s: %v %s", a.NS, a.Address, err, out)
		}
		if out, err := exec.Command("ip", "-o", "link", "show", "dev", a.HostVeth).CombinedOutput(); err != nil || !strings.Contains(string(out), "master "+n.Bridge()) {
			t.Fatalf("%s is not on the bridge: %v %s", a.HostVeth, err, out)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if p := n.Pooled(); p != 0 {
		t.Fatalf("the pool was refilled while held: %d", p)
	}
	release()
	waitPooled(t, n, 2)
	n.mu.Lock()
	for _, a := range n.pool {
		if seen[a.NS] || seen[a.Address] {
			t.Errorf("a namespace or address handed to a clone is back in the pool: %+v", a)
		}
	}
	n.mu.Unlock()

	// A clone's end removes its namespace, pooled or not.
	for _, a := range as {
		n.Detach(AttachmentOf(a.NS, a.Address))
		if exists(a.NSPath) {
			t.Fatalf("%s still exists after Detach", a.NS)
		}
		if exec.Command("ip", "link", "show", "dev", a.HostVeth).Run() == nil {
			t.Fatalf("%s still exists after Detach", a.HostVeth)
		}
	}

	// A daemon killed with namespaces pooled: the next one on the same
	// state directory sweeps them, except one a running clone uses.
	left := ours(t, n)
	if len(left) != 2 {
		t.Fatalf("pool namespaces: %v", left)
	}
	next := &Network{key: n.key, used: map[string]bool{}}
	gone := next.Sweep(map[string]bool{left[0]: true})
	if len(gone) != 1 || gone[0] != left[1] {
		t.Fatalf("swept %v, want [%s]", gone, left[1])
	}
	if got := ours(t, n); len(got) != 1 || got[0] != left[0] {
		t.Fatalf("after the sweep: %v, want [%s]", got, left[0])
	}

	// Close removes what the pool holds, and the bridge.
	n.Close()
	if got := ours(t, n); len(got) != 0 {
		t.Fatalf("after Close: %v", got)
	}
	if exec.Command("ip", "link", "show", "dev", n.Bridge()).Run() == nil {
		t.Fatalf("bridge %s still exists after Close", n.Bridge())
	}
}

func TestNetnsPoolOff(t *testing.T) {
	requireNetAdmin(t)
	n := NewNetwork(t.TempDir())
	t.Cleanup(n.Close)
	n.SetPoolSize(0)
	n.Fill()
	time.Sleep(50 * time.Millisecond)
	if got := ours(t, n); len(got) != 0 || n.Pooled() != 0 {
		t.Fatalf("a pool of size 0 made %v", got)
	}
	id := "job-x" + n.key
	a, err := n.Attach(id)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Detach(a)
	if a.NS != "cedana-"+id || a.HostVeth != HostVeth(id) {
		t.Fatalf("without a pool: %+v", a)
	}
}
