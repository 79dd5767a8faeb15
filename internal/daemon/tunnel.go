package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// A lazy migration's memory travels over NATS like everything else between
// nodes (authenticated, and through whatever route the cluster has), not
// over a TCP connection from node to node: CRIU's page server on the
// source and its lazy-pages daemon on the target each talk TCP to their
// own node's daemon on a loopback port, and the two daemons carry the
// bytes between them.
//
// Each direction is a sequence of NATS messages to a subject of the
// receiving node (cedana.node.<node>.tunnel.<random>), at most tunnelChunk
// bytes each and numbered; the receiver writes them to its connection in
// that order and acknowledges each once written. NATS delivers one
// connection's messages to a subscriber in order but may drop some (it is
// at-most-once): a gap in the numbers ends the tunnel with an error,
// never a silent hole in the stream. The sender keeps at most
// tunnelWindow messages unacknowledged, so that a slow reader slows the
// writer down; no acknowledgement for tunnelTimeout ends the tunnel too.
// The target's first message opens the tunnel and names its subject;
// "eof" half-closes a direction.
//
// The same tunnel carries a stop-and-copy migration's archive from the
// source's dump to the target's disk while the dump runs (push.go): then
// the source's end reads the archive stream and the target's end writes
// a file, and only the source sends.

// A peer that dies sends nothing, not even its end of stream: each end
// that has sent something not yet acknowledged fails the tunnel after
// tunnelTimeout without an acknowledgement, and an end with nothing to
// send sends a "ping" every tunnelPing, so that a dead peer is noticed
// even when no data flows (a page server waiting for its next request).
// Liveness is the tunnel's own, not the cluster's heartbeats: those can
// lag by seconds on a loaded machine and would end healthy transfers.
var (
	tunnelTimeout = 30 * time.Second
	tunnelPing    = 5 * time.Second
)

const (
	tunnelChunk  = 512 << 10
	tunnelWindow = 32
	// tunnelOpHeader is "open", "data" (the default), "eof", "ping" or
	// "abort".
	tunnelOpHeader = "Cedana-Tunnel"
	// tunnelPeerHeader carries the opener's subject in "open".
	tunnelPeerHeader = "Cedana-Tunnel-Peer"
	// tunnelSeqHeader numbers a direction's messages from 1.
	tunnelSeqHeader = "Cedana-Seq"
)

// tunnel is one end of a byte stream between two nodes.
type tunnel struct {
	nc   *nats.Conn
	sub  *nats.Subscription
	self string // the subject this end receives on

	mu     sync.Mutex
	conn   io.ReadWriteCloser
	peer   string
	err    error
	closed bool
	// sentEOF and gotEOF: each direction ended cleanly; with both, the
	// tunnel is done.
	sentEOF, gotEOF bool
	// next is the number of the next message expected from the peer.
	next uint64
	// acks is this end's inbox for the peer's acknowledgements; slots
	// holds one token per message in flight.
	acks  *nats.Subscription
	slots chan struct{}
	dead  chan struct{} // closed by stop
	// sendDone is closed when this end's sending has ended, cleanly
	// (everything it sent acknowledged) or not (see Err).
	sendDone chan struct{}
	// lastAck is when the peer last acknowledged a message, or when this
	// end last sent one with none outstanding (guarded by mu).
	lastAck time.Time
	// timeout and ping are tunnelTimeout and tunnelPing when the tunnel
	// was made.
	timeout, ping time.Duration
	// sendMu orders this end's messages (data and pings); after its
	// "eof" (eofSent) it sends no more pings.
	sendMu  sync.Mutex
	seq     uint64
	eofSent bool
}

func newTunnel(nc *nats.Conn, node string) *tunnel {
	return &tunnel{nc: nc, self: tunnelSubject(node), slots: make(chan struct{}, tunnelWindow), dead: make(chan struct{}),
		sendDone: make(chan struct{}), timeout: tunnelTimeout, ping: tunnelPing}
}

// tunnelSubject is a fresh subject for node to receive a tunnel on.
func tunnelSubject(node string) string {
	return "cedana.node." + node + ".tunnel." + randomToken()
}

// randomToken is 128 random bits in hex: fresh subjects and migration
// attempt IDs.
func randomToken() string {
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	return hex.EncodeToString(tok[:])
}

// serveTunnel is the source's end: it listens on a fresh subject and, when
// the target opens the tunnel, connects with dial (to CRIU's page server,
// say) and carries bytes both ways. stop ends it.
func serveTunnel(nc *nats.Conn, node string, dial func() (io.ReadWriteCloser, error)) (t *tunnel, err error) {
	t = newTunnel(nc, node)
	t.sub, err = nc.Subscribe(t.self, func(m *nats.Msg) {
		if m.Header.Get(tunnelOpHeader) == "open" {
			t.accept(m, dial)
			return
		}
		t.receive(m)
	})
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		t.stop()
		return nil, fmt.Errorf("open a tunnel over NATS: %w", err)
	}
	return t, nil
}

// dialTCP connects a tunnel to a loopback TCP server (CRIU's page server).
func dialTCP(addr, what string) func() (io.ReadWriteCloser, error) {
	return func() (io.ReadWriteCloser, error) {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("connect to the %s: %w", what, err)
		}
		return conn, nil
	}
}

// accept handles the target's "open": connect with dial and start sending.
func (t *tunnel) accept(m *nats.Msg, dial func() (io.ReadWriteCloser, error)) {
	t.mu.Lock()
	if t.conn != nil || t.closed {
		t.mu.Unlock()
		respondErr(m, errors.New("the tunnel is already open"))
		return
	}
	t.mu.Unlock()
	peer := m.Header.Get(tunnelPeerHeader)
	if peer == "" {
		respondErr(m, errors.New("open without the opener's subject"))
		return
	}
	conn, err := dial()
	if err != nil {
		respondErr(m, err)
		return
	}
	t.mu.Lock()
	if t.closed { // stopped while it dialed
		t.mu.Unlock()
		_ = conn.Close()
		respondErr(m, errors.New("the tunnel was closed"))
		return
	}
	t.conn, t.peer = conn, peer
	t.mu.Unlock()
	t.startSending() // takes t.mu itself
	_ = m.Respond(nil)
}

// dialTunnel is the target's end: conn (the lazy-pages daemon's
// connection, or the file an archive is written to) is joined to the
// source's subject.
func dialTunnel(nc *nats.Conn, node, source string, conn io.ReadWriteCloser) (*tunnel, error) {
	t := newTunnel(nc, node)
	t.conn, t.peer = conn, source
	var err error
	if t.sub, err = nc.Subscribe(t.self, t.receive); err == nil {
		err = nc.Flush()
	}
	if err == nil {
		open := nats.NewMsg(source)
		open.Header.Set(tunnelOpHeader, "open")
		open.Header.Set(tunnelPeerHeader, t.self)
		err = t.request(open)
	}
	if err != nil {
		t.stop()
		return nil, fmt.Errorf("open the tunnel to the source: %w", err)
	}
	t.startSending()
	return t, nil
}

// startSending copies the connection to the peer until EOF or an error.
// Called with the connection set.
func (t *tunnel) startSending() {
	inbox := nats.NewInbox()
	acks, err := t.nc.Subscribe(inbox, func(m *nats.Msg) {
		if e := m.Header.Get(blobErrHeader); e != "" {
			t.fail(fmt.Errorf("the other node: %s", e))
			return
		}
		if m.Header.Get("Status") == "503" {
			// The server's "no responders": nobody listens on the
			// peer's subject any more (its end is gone).
			t.fail(errors.New("the other node's end of the tunnel is gone"))
			return
		}
		t.mu.Lock()
		t.lastAck = time.Now()
		t.mu.Unlock()
		select {
		case <-t.slots:
		default:
		}
	})
	if err != nil {
		t.fail(err)
		close(t.sendDone)
		return
	}
	t.mu.Lock()
	if t.closed { // stop has run and would not see acks
		t.mu.Unlock()
		_ = acks.Unsubscribe()
		close(t.sendDone)
		return
	}
	t.acks = acks
	t.lastAck = time.Now()
	t.mu.Unlock()
	send := func(data []byte, op string) error {
		t.sendMu.Lock()
		defer t.sendMu.Unlock()
		if op == "ping" && t.eofSent {
			return nil // the peer may be gone already, and rightly
		}
		t.eofSent = t.eofSent || op == "eof"
		if len(t.slots) == 0 {
			t.mu.Lock()
			t.lastAck = time.Now() // nothing was outstanding: the clock starts now
			t.mu.Unlock()
		}
		select {
		case t.slots <- struct{}{}:
		case <-t.dead:
			return errors.New("the tunnel is closed")
		case <-time.After(t.timeout):
			return fmt.Errorf("the other node acknowledged nothing for %v", t.timeout)
		}
		t.seq++
		msg := nats.NewMsg(t.peer)
		msg.Reply = inbox
		msg.Header.Set(tunnelSeqHeader, strconv.FormatUint(t.seq, 10))
		if op != "" {
			msg.Header.Set(tunnelOpHeader, op)
		}
		msg.Data = data // copied into the connection's buffer by PublishMsg
		return t.nc.PublishMsg(msg)
	}
	go t.keepAlive(send)
	go func() {
		defer close(t.sendDone)
		buf := make([]byte, tunnelChunk)
		for {
			n, rerr := t.conn.Read(buf)
			if n > 0 {
				if err := send(buf[:n], ""); err != nil {
					t.fail(err)
					return
				}
			}
			if rerr != nil {
				if !errors.Is(rerr, io.EOF) {
					t.fail(rerr)
					return
				}
				if err := send(nil, "eof"); err != nil {
					t.fail(err)
					return
				}
				// Ended once the peer has it all.
				for range tunnelWindow {
					select {
					case t.slots <- struct{}{}:
					case <-t.dead:
						return
					case <-time.After(t.timeout):
						t.fail(fmt.Errorf("the other node acknowledged nothing for %v", t.timeout))
						return
					}
				}
				t.ended(true)
				return
			}
		}
	}()
}

// keepAlive fails the tunnel when the peer has left something unacknowledged
// for tunnelTimeout, and pings it when nothing is outstanding, until this
// end's sending has ended.
func (t *tunnel) keepAlive(send func([]byte, string) error) {
	tick := time.NewTicker(min(t.ping, t.timeout/4))
	defer tick.Stop()
	for {
		select {
		case <-t.sendDone:
			return
		case <-t.dead:
			return
		case <-tick.C:
		}
		t.mu.Lock()
		since := time.Since(t.lastAck)
		t.mu.Unlock()
		switch {
		case len(t.slots) > 0 && since > t.timeout:
			t.fail(fmt.Errorf("the other node acknowledged nothing for %v", t.timeout))
			return
		case len(t.slots) == 0 && since >= t.ping:
			if err := send(nil, "ping"); err != nil {
				t.fail(err)
				return
			}
		}
	}
}

// ended records the end of one direction (sent: this end's), and stops
// the tunnel once both have ended.
func (t *tunnel) ended(sent bool) {
	t.mu.Lock()
	if sent {
		t.sentEOF = true
	} else {
		t.gotEOF = true
	}
	both := t.sentEOF && t.gotEOF
	t.mu.Unlock()
	if both {
		t.stop()
	}
}

// request sends msg and waits for the peer's acknowledgement.
func (t *tunnel) request(msg *nats.Msg) error {
	reply, err := t.nc.RequestMsg(msg, t.timeout)
	if err != nil {
		return err
	}
	if e := reply.Header.Get(blobErrHeader); e != "" {
		return errors.New(e)
	}
	return nil
}

// receive writes the peer's bytes to the connection, in order, then
// acknowledges them.
func (t *tunnel) receive(m *nats.Msg) {
	if m.Header.Get(tunnelOpHeader) == "abort" {
		err := fmt.Errorf("the other node: %s", m.Header.Get(blobErrHeader))
		t.mu.Lock()
		if t.err == nil {
			t.err = err
		}
		t.mu.Unlock()
		t.stop() // no abort back
		return
	}
	t.mu.Lock()
	conn, closed := t.conn, t.closed
	seq, _ := strconv.ParseUint(m.Header.Get(tunnelSeqHeader), 10, 64)
	want := t.next + 1
	if seq == want {
		t.next = seq
	}
	t.mu.Unlock()
	if conn == nil || closed {
		respondErr(m, errors.New("the tunnel is closed"))
		return
	}
	if seq != want {
		err := fmt.Errorf("message %d of the stream arrived where %d was due: bytes were lost on the way", seq, want)
		respondErr(m, err)
		t.fail(err)
		return
	}
	if m.Header.Get(tunnelOpHeader) == "ping" {
		_ = m.Respond(nil)
		return
	}
	if m.Header.Get(tunnelOpHeader) == "eof" {
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_ = m.Respond(nil)
		t.ended(false)
		return
	}
	if d, ok := conn.(interface{ SetWriteDeadline(time.Time) error }); ok {
		_ = d.SetWriteDeadline(time.Now().Add(t.timeout))
	}
	if _, err := conn.Write(m.Data); err != nil {
		respondErr(m, err)
		t.fail(err)
		return
	}
	_ = m.Respond(nil)
}

// fail ends the tunnel with err: both connections close, so CRIU on each
// side sees the stream end. The peer is told ("abort"), so that its end
// fails too even when it has nothing to send that could go unanswered
// (a page server waiting for its next request).
func (t *tunnel) fail(err error) {
	t.mu.Lock()
	first := t.err == nil && !t.closed
	if t.err == nil {
		t.err = err
	}
	peer := t.peer
	t.mu.Unlock()
	if first && peer != "" {
		msg := nats.NewMsg(peer)
		msg.Header.Set(tunnelOpHeader, "abort")
		msg.Header.Set(blobErrHeader, err.Error())
		_ = t.nc.PublishMsg(msg)
	}
	t.stop()
}

// stop closes the connection and the subscription. They are closed
// outside the lock: a connection's Close may block (a file on a slow
// disk, a TCP peer), and Err, fail and the senders must not wait for it.
func (t *tunnel) stop() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	close(t.dead)
	sub, acks, conn := t.sub, t.acks, t.conn
	t.mu.Unlock()
	if sub != nil {
		_ = sub.Unsubscribe()
	}
	if acks != nil {
		_ = acks.Unsubscribe()
	}
	if conn != nil {
		_ = conn.Close()
	}
}

// Err is why the tunnel failed, or nil.
func (t *tunnel) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// sentAll reports whether everything this end sent, its end of stream
// included, was acknowledged.
func (t *tunnel) sentAll() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sentEOF
}

func respondErr(m *nats.Msg, err error) {
	reply := nats.NewMsg(m.Reply)
	reply.Header.Set(blobErrHeader, err.Error())
	_ = m.RespondMsg(reply)
}

// pageServerProxy is the target's loopback listener for its lazy-pages
// daemon: the one connection it accepts is tunnelled to the source.
type pageServerProxy struct {
	l    net.Listener
	mu   sync.Mutex
	t    *tunnel
	err  error
	done chan struct{}
}

// listenPageServer starts a proxy for the source's tunnel subject.
func listenPageServer(nc *nats.Conn, node, source string) (*pageServerProxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the lazy-pages daemon: %w", err)
	}
	p := &pageServerProxy{l: l, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		conn, err := l.Accept()
		l.Close()
		if err != nil {
			p.setErr(err)
			return
		}
		t, err := dialTunnel(nc, node, source, conn)
		if err != nil {
			conn.Close()
			p.setErr(err)
			return
		}
		p.mu.Lock()
		p.t = t
		p.mu.Unlock()
	}()
	return p, nil
}

func (p *pageServerProxy) setErr(err error) {
	p.mu.Lock()
	p.err = err
	p.mu.Unlock()
}

// Addr is where the lazy-pages daemon connects.
func (p *pageServerProxy) Addr() string { return p.l.Addr().String() }

// Close ends the proxy and its tunnel. It returns why the tunnel never
// opened, if it did not.
func (p *pageServerProxy) Close() error {
	p.l.Close()
	<-p.done
	p.mu.Lock()
	t, err := p.t, p.err
	p.mu.Unlock()
	if t != nil {
		t.stop()
	}
	if errors.Is(err, net.ErrClosed) {
		return nil // closed before the lazy-pages daemon connected
	}
	return err
}
