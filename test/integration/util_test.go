package integration

import (
	"net"
	"strconv"
	"testing"
	"time"
)

func itoa(n int) string { return strconv.Itoa(n) }

// tcpListener is a loopback listener owned by the test.
type tcpListener struct {
	ln    net.Listener
	port  int
	conns chan net.Conn
}

func listenTCP(t *testing.T) *tcpListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &tcpListener{ln: ln, port: ln.Addr().(*net.TCPAddr).Port, conns: make(chan net.Conn, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.conns <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return l
}

func (l *tcpListener) accept(t *testing.T, d time.Duration) net.Conn {
	t.Helper()
	select {
	case c := <-l.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(d):
		t.Fatal("no connection arrived")
		return nil
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
