package template

import (
	"fmt"
	"os"
	"strings"
)

// The pool: network namespaces made ahead of the clones that will join
// them. Making one costs three `ip` processes and the kernel's work for a
// new namespace (7 ms for a lone clone on an idle machine, 15–25 ms each
// when five clones start at once on two cores); a clone that takes one
// from the pool pays nothing of it. Pool namespaces are named
// cedana-p<KEY>-<N> (KEY from the daemon's state directory, N counting
// up), so that a daemon finds its own leftovers and never another's.
//
// Rules:
//   - Take hands a namespace out at most once; it is never put back (a
//     clone's namespace is removed when the clone ends, like one made for
//     it).
//   - The pool fills in the background, one namespace at a time, only
//     while no clone run holds it (Hold): refilling never competes with
//     the restores it is meant to speed up.
//   - Nothing is made before the first Fill (a template that listens was
//     made, or a clone run ended): a daemon that never clones pays
//     nothing.
//   - Close removes the pooled namespaces; Sweep, at daemon start, those
//     a killed daemon left.

// poolPrefix is the name prefix of this daemon's pool namespaces.
func (n *Network) poolPrefix() string { return "cedana-p" + n.key + "-" }

// vethOf is the host end's name of namespace ns's pair: cedana-X has
// HostVeth(X), for clones' own namespaces (X = the job ID) and pool ones
// alike.
func vethOf(ns string) string { return HostVeth(strings.TrimPrefix(ns, "cedana-")) }

// AttachmentOf describes the network of a clone recorded with namespace
// ns and address addr, for Detach.
func AttachmentOf(ns, addr string) *Attachment {
	return &Attachment{NS: ns, NSPath: netnsDir + "/" + ns, Address: addr, HostVeth: vethOf(ns)}
}

// SetPoolSize sets how many namespaces the pool keeps ready (0: none;
// clones then make their own). It takes effect at the next Fill.
func (n *Network) SetPoolSize(size int) {
	n.mu.Lock()
	n.poolSize = max(0, min(size, 64))
	n.mu.Unlock()
}

// take returns a pooled namespace, or nil when the pool is empty.
func (n *Network) take() *Attachment {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.pool) == 0 {
		return nil
	}
	a := n.pool[0]
	n.pool = n.pool[1:]
	return a
}

// Pooled is how many namespaces the pool holds ready now.
func (n *Network) Pooled() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.pool)
}

// Hold pauses filling until release is called (by every holder): clone
// runs hold the pool while their clones start. The last release fills it
// again.
func (n *Network) Hold() (release func()) {
	n.mu.Lock()
	n.holds++
	n.mu.Unlock()
	done := false
	return func() {
		n.mu.Lock()
		if done {
			n.mu.Unlock()
			return
		}
		done = true
		n.holds--
		last := n.holds == 0
		n.mu.Unlock()
		if last {
			n.Fill()
		}
	}
}

// Fill makes namespaces in the background until the pool holds its size.
// It returns at once; a fill under way goes on.
func (n *Network) Fill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.filling || n.closed || n.holds > 0 || len(n.pool) >= n.poolSize {
		return
	}
	n.filling = true
	n.fills.Add(1)
	go n.fill()
}

// fill is Fill's goroutine.
func (n *Network) fill() {
	defer n.fills.Done()
	for {
		n.mu.Lock()
		if n.closed || n.holds > 0 || len(n.pool) >= n.poolSize {
			n.filling = false
			n.mu.Unlock()
			return
		}
		ns := ""
		for ns == "" || exists(netnsDir+"/"+ns) {
			n.seq++
			ns = fmt.Sprintf("%s%d", n.poolPrefix(), n.seq)
		}
		n.mu.Unlock()
		a, err := n.create(ns)
		n.mu.Lock()
		switch {
		case err != nil:
			// Clones make their own meanwhile; the next Fill tries again.
			n.filling, n.fillErr = false, err
			n.mu.Unlock()
			return
		case n.closed:
			n.mu.Unlock()
			n.Detach(a)
			n.mu.Lock()
			n.filling = false
			n.mu.Unlock()
			return
		}
		n.pool = append(n.pool, a)
		n.fillErr = nil
		n.mu.Unlock()
	}
}

// FillErr is why the pool last failed to make a namespace (nil: it did
// not).
func (n *Network) FillErr() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.fillErr
}

// drain stops filling and removes the pooled namespaces.
func (n *Network) drain() {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.fills.Wait()
	n.mu.Lock()
	pool := n.pool
	n.pool = nil
	n.mu.Unlock()
	n.removeAll(pool)
}

// removeAll removes namespaces and their pairs with one `ip` process, and
// frees their addresses.
func (n *Network) removeAll(as []*Attachment) {
	if len(as) == 0 {
		return
	}
	var b strings.Builder
	for _, a := range as {
		fmt.Fprintf(&b, "link del %s\nnetns del %s\n", a.HostVeth, a.NS)
	}
	_ = ipRun(b.String(), "-force", "-batch", "-")
	n.mu.Lock()
	for _, a := range as {
		delete(n.used, a.Address)
	}
	n.mu.Unlock()
}

// Sweep removes the pool namespaces a daemon on the same state directory
// left behind (killed before it could remove them), except those named in
// keep (clones that still run in them). It returns their names. Call it
// at daemon start, before the first Fill.
func (n *Network) Sweep(keep map[string]bool) []string {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return nil
	}
	var gone []string
	var as []*Attachment
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, n.poolPrefix()) || keep[name] {
			continue
		}
		gone = append(gone, name)
		as = append(as, AttachmentOf(name, ""))
	}
	n.removeAll(as)
	return gone
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
