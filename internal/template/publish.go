package template

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
)

// Publish is a host port forwarded to a clone's port (--publish
// HOSTPORT:PORT), as a container runtime's userland proxy does: the daemon
// accepts on the host port and copies both ways to the clone's address.
type Publish struct {
	HostPort, Port int
}

// ParsePublish parses "HOSTPORT:PORT".
func ParsePublish(s string) (Publish, error) {
	h, p, ok := strings.Cut(s, ":")
	hp, err1 := strconv.Atoi(h)
	cp, err2 := strconv.Atoi(p)
	if !ok || err1 != nil || err2 != nil || hp <= 0 || hp > 65535 || cp <= 0 || cp > 65535 {
		return Publish{}, fmt.Errorf("%w: --publish %q: want HOSTPORT:PORT", ErrInvalid, s)
	}
	return Publish{HostPort: hp, Port: cp}, nil
}

// Proxy forwards connections from a host listener to a clone.
type Proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// StartProxy listens on the host port (all addresses) and forwards every
// connection to target ("ADDRESS:PORT").
func StartProxy(hostPort int, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(hostPort))
	if err != nil {
		return nil, fmt.Errorf("publish host port %d: %w", hostPort, err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

func (p *Proxy) track(c net.Conn, on bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on && p.closed {
		return false
	}
	if on {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
	return true
}

func (p *Proxy) forward(c net.Conn) {
	defer p.wg.Done()
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	if !p.track(c, true) || !p.track(up, true) {
		return
	}
	defer p.track(c, false)
	defer p.track(up, false)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(up, c)
	go cp(c, up)
	<-done
	<-done
}

// Close stops listening and ends the forwarded connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}
