package template

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// Network gives clones network namespaces of their own, as a container
// runtime does: one bridge per daemon on a private /24, and per clone a
// namespace (ip netns, /run/netns/cedana-ID) with a veth pair, whose
// inside end ("eth0") gets the next free address. The host reaches every
// clone at its address on the template's ports; clones listen on the same
// port without clashing. Detach deletes the namespace and the pair.
// Namespaces can be made ahead of the clones (see netpool.go).
//
// It runs `ip` (iproute2): namespaces and links are few and long-lived,
// and its error messages are the ones administrators know.
type Network struct {
	mu     sync.Mutex
	key    string // names the bridge; from the daemon's state directory
	bridge string
	prefix string // "10.A.B."
	used   map[string]bool
	next   int // where the search for a free address starts (0-252)

	// The pool (netpool.go): namespaces ready for clones, and how it is
	// being filled.
	pool     []*Attachment
	poolSize int
	seq      int  // the last pool namespace's number
	holds    int  // clone runs under way: no filling meanwhile
	filling  bool // a fill goroutine runs
	closed   bool
	fillErr  error
	fills    sync.WaitGroup
}

// netnsDir is where `ip netns` keeps named namespaces.
const netnsDir = "/run/netns"

// Attachment is one clone's network.
type Attachment struct {
	// NS is the namespace's name; NSPath the file to join it by.
	NS, NSPath string
	// Address is the clone's IPv4 address, reachable from the host.
	Address string
	// HostVeth is the host end of the pair.
	HostVeth string
	// Pooled says the namespace came ready from the pool.
	Pooled bool
}

// NewNetwork returns the clone network of the daemon whose state lives in
// stateDir (which makes the bridge's name, so that two daemons on one
// host never share one).
func NewNetwork(stateDir string) *Network {
	h := fnv.New32a()
	h.Write([]byte(stateDir))
	return &Network{key: fmt.Sprintf("%08x", h.Sum32()), used: map[string]bool{}}
}

// Bridge is the bridge's name ("cdn" + 8 hex digits), once set up.
func (n *Network) Bridge() string { return "cdn" + n.key }

// Reserve marks addr as taken (a clone that runs since before a restart).
func (n *Network) Reserve(addr string) {
	n.mu.Lock()
	n.used[addr] = true
	n.mu.Unlock()
}

func ipCmd(args ...string) error { return ipRun("", args...) }

// ipRun runs ip with args and stdin (a -batch script when not "").
func ipRun(stdin string, args ...string) error {
	cmd := exec.Command("ip", args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return errors.New("`ip` (iproute2) is not installed; clones with listening sockets need it")
		}
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// setup creates the bridge once, on a /24 that no interface of the host
// uses yet, or finds the one an earlier daemon made.
func (n *Network) setup() error {
	if n.prefix != "" {
		return nil
	}
	br := n.Bridge()
	if ifc, err := net.InterfaceByName(br); err == nil {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				ip := ipn.IP.To4()
				n.bridge, n.prefix = br, fmt.Sprintf("%d.%d.%d.", ip[0], ip[1], ip[2])
				return ipCmd("link", "set", br, "up")
			}
		}
		_ = ipCmd("link", "del", br)
	}
	taken := map[string]bool{}
	ifaces, _ := net.Interfaces()
	for _, ifc := range ifaces {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
				ip := ipn.IP.To4()
				taken[fmt.Sprintf("%d.%d.%d.", ip[0], ip[1], ip[2])] = true
			}
		}
	}
	h := fnv.New32a()
	h.Write([]byte(n.key))
	seed := h.Sum32()
	prefix := ""
	for i := uint32(0); i < 4096; i++ {
		v := seed + i*7919
		p := fmt.Sprintf("10.%d.%d.", 160+v%64, (v/64)%256)
		if !taken[p] {
			prefix = p
			break
		}
	}
	if prefix == "" {
		return errors.New("no free private /24 for the clone bridge")
	}
	// A bridge with no address of its own takes the lowest MAC of its
	// ports and changes it when ports come and go: a clone that resolved
	// the gateway to the MAC of a veth since deleted sends its answers
	// nowhere until its ARP entry expires. A set address stays (as
	// container runtimes do).
	mac := fmt.Sprintf("02:cd:%02x:%02x:%02x:%02x", byte(seed>>24), byte(seed>>16), byte(seed>>8), byte(seed))
	if err := ipCmd("link", "add", br, "address", mac, "type", "bridge"); err != nil {
		return err
	}
	if err := ipCmd("addr", "add", prefix+"1/24", "dev", br); err != nil {
		_ = ipCmd("link", "del", br)
		return err
	}
	if err := ipCmd("link", "set", br, "up"); err != nil {
		_ = ipCmd("link", "del", br)
		return err
	}
	n.bridge, n.prefix = br, prefix
	return nil
}

// Attach gives clone id a network namespace, from the pool when it holds
// one (see netpool.go), else made now, and returns how to join and reach
// it.
func (n *Network) Attach(id string) (*Attachment, error) {
	if a := n.take(); a != nil {
		a.Pooled = true
		return a, nil
	}
	return n.create("cedana-" + id)
}

// create makes namespace ns with a veth pair on the bridge and the next
// free address.
func (n *Network) create(ns string) (*Attachment, error) {
	n.mu.Lock()
	if err := n.setup(); err != nil {
		n.mu.Unlock()
		return nil, fmt.Errorf("clone network: %w", err)
	}
	// Round robin from the last address given: an address freed a moment
	// ago may still sit in the host's neighbour (ARP) cache with the MAC
	// of the veth that was deleted.
	addr := ""
	for k := 0; k < 253; k++ {
		i := 2 + (n.next+k)%253
		a := fmt.Sprintf("%s%d", n.prefix, i)
		if !n.used[a] {
			addr = a
			n.used[a] = true
			n.next = i - 1
			break
		}
	}
	br, prefix := n.bridge, n.prefix
	n.mu.Unlock()
	if addr == "" {
		return nil, errors.New("clone network: all 253 addresses are in use")
	}
	a := AttachmentOf(ns, addr)
	// Three `ip` processes, not one per step: on a busy machine each
	// costs tens of milliseconds, and every clone pays them.
	steps := []struct {
		args  []string
		batch string
	}{
		{[]string{"netns", "add", a.NS}, ""},
		{[]string{"-batch", "-"}, fmt.Sprintf("link add %s type veth peer name eth0 netns %s\nlink set %s master %s\nlink set %s up\nneigh flush to %s\n",
			a.HostVeth, a.NS, a.HostVeth, br, a.HostVeth, addr)},
		{[]string{"-n", a.NS, "-batch", "-"}, fmt.Sprintf("link set lo up\naddr add %s/24 dev eth0\nlink set eth0 up\nroute add default via %s1\n",
			addr, prefix)},
	}
	for _, s := range steps {
		if err := ipRun(s.batch, s.args...); err != nil {
			n.Detach(a)
			return nil, fmt.Errorf("clone network: %w", err)
		}
	}
	return a, nil
}

// Detach removes a clone's namespace and veth pair and frees its address.
// It is idempotent.
func (n *Network) Detach(a *Attachment) {
	if a == nil {
		return
	}
	_ = ipCmd("link", "del", a.HostVeth) // takes the inside end along
	if _, err := os.Stat(a.NSPath); err == nil {
		_ = ipCmd("netns", "del", a.NS)
	}
	n.mu.Lock()
	delete(n.used, a.Address)
	n.mu.Unlock()
}

// Close removes the pool's namespaces, then the bridge when no clone
// uses it any more.
func (n *Network) Close() {
	n.drain()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.bridge != "" && len(n.used) == 0 {
		_ = ipCmd("link", "del", n.bridge)
		n.bridge, n.prefix = "", ""
	}
}

// HostVeth is the name of clone id's host-side veth ("cv" + 8 hex
// digits: interface names have at most 15 characters).
func HostVeth(id string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	return fmt.Sprintf("cv%08x", h.Sum32())
}
