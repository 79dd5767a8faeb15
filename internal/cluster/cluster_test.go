package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func join(t *testing.T, o Options, c Capacity) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := Join(ctx, o, func() Capacity { return c }, nil)
	if err != nil {
		t.Fatalf("join %s: %v", o.Node, err)
	}
	t.Cleanup(n.Close)
	return n
}

func nodeStates(t *testing.T, n *Node) map[string]NodeInfo {
	t.Helper()
	list, err := n.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]NodeInfo{}
	for _, i := range list {
		m[i.Name] = i
	}
	return m
}

// TestMembership: a daemon with an embedded server and a second one that
// joins it see each other ready with their capacity; when the second stops
// heartbeating it is seen down within the node timeout (plus a heartbeat).
func TestMembership(t *testing.T) {
	addr := freeAddr(t)
	a := join(t, Options{Node: "a", StateDir: t.TempDir(), Listen: addr, NodeTimeout: time.Second},
		Capacity{CPUs: 2, CRIUVersion: "4.2.1"})
	b := join(t, Options{Node: "b", URLs: []string{"nats://" + addr}, NodeTimeout: time.Second},
		Capacity{CPUs: 4, RunningJobs: 3})

	for _, n := range []*Node{a, b} {
		got := nodeStates(t, n)
		if got["a"].State != StateReady || got["b"].State != StateReady {
			t.Fatalf("%s sees %+v, want a and b ready", n.Name(), got)
		}
		if got["a"].CRIUVersion != "4.2.1" || got["b"].CPUs != 4 || got["b"].RunningJobs != 3 {
			t.Errorf("%s sees capacities %+v", n.Name(), got)
		}
	}
	b.Close()
	stopped := time.Now()
	deadline := stopped.Add(5 * time.Second)
	for {
		got := nodeStates(t, a)
		if got["b"].State == StateDown {
			if d := time.Since(stopped); d > time.Second+time.Second/3+500*time.Millisecond {
				t.Errorf("b seen down after %v, want within the 1s timeout plus one heartbeat", d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b still %s 5s after it stopped", got["b"].State)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := nodeStates(t, a); got["a"].State != StateReady {
		t.Errorf("a is %s, want ready (it keeps heartbeating)", got["a"].State)
	}
}

// TestDraining shows a node that reports draining as draining, to the
// others and to itself (Self, without reading the bucket).
func TestDraining(t *testing.T) {
	a := join(t, Options{Node: "a", StateDir: t.TempDir(), NodeTimeout: time.Second}, Capacity{Draining: true, CPUs: 3})
	if got := nodeStates(t, a)["a"].State; got != StateDraining {
		t.Errorf("state %q, want draining", got)
	}
	if self := a.Self(); self.Name != "a" || self.State != StateDraining || self.CPUs != 3 || time.Since(self.Heartbeat) > time.Minute {
		t.Errorf("Self = %+v, want a draining with 3 CPUs, its heartbeat just sent", self)
	}
}

// TestRefusals: what must not start, and the errors that say why.
func TestRefusals(t *testing.T) {
	addr := freeAddr(t)
	join(t, Options{Node: "a", StateDir: t.TempDir(), Listen: addr, Token: "s3cret-token-for-tests"}, Capacity{})
	ctx := context.Background()
	cases := []struct {
		name string
		o    Options
		want string
		is   error
	}{
		{"anonymous remote URL", Options{Node: "x", URLs: []string{"nats://10.1.2.3:4222"}}, "has no credentials", ErrInsecure},
		{"anonymous listen", Options{Node: "x", StateDir: t.TempDir(), Listen: "0.0.0.0:0"}, "without a token", ErrInsecure},
		{"wrong token", Options{Node: "x", URLs: []string{"nats://wrong@" + addr}}, "refused the credentials", nil},
		{"nobody there", Options{Node: "x", URLs: []string{"nats://" + freeAddr(t)}}, "no NATS server reachable", nil},
		{"bad scheme", Options{Node: "x", URLs: []string{"http://" + addr}}, "scheme must be", nil},
		{"bad node name", Options{Node: "a b", StateDir: t.TempDir()}, "letters, digits", nil},
		{"replicas on one server", Options{Node: "x", StateDir: t.TempDir(), Replicas: 3}, "single server", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, err := Join(ctx, c.o, nil, nil)
			if err == nil {
				n.Close()
				t.Fatalf("joined, want an error with %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) || (c.is != nil && !errors.Is(err, c.is)) {
				t.Errorf("error %q, want %q (is %v)", err, c.want, c.is)
			}
			if strings.Contains(err.Error(), "wrong@") {
				t.Errorf("error quotes the token: %q", err)
			}
		})
	}
	// The right token works.
	join(t, Options{Node: "y", URLs: []string{fmt.Sprintf("nats://s3cret-token-for-tests@%s", addr)}}, Capacity{})
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"nats://user:pass@h:4222": "nats://redacted@h:4222",
		"nats://tok@h:4222":       "nats://redacted@h:4222",
		"nats://h:4222":           "nats://h:4222",
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDecodeNode(t *testing.T) {
	at := time.Unix(1000, 0)
	hb := []byte(`{"cpus":2,"timeout_ms":2000}`)
	if s := decodeNode("n", hb, at, at.Add(1900*time.Millisecond), time.Second).State; s != StateReady {
		t.Errorf("1.9s after a heartbeat with a 2s timeout: %s, want ready (the sender's timeout rules)", s)
	}
	if s := decodeNode("n", hb, at, at.Add(2100*time.Millisecond), time.Second).State; s != StateDown {
		t.Errorf("2.1s after: %s, want down", s)
	}
	if s := decodeNode("n", []byte("garbage"), at, at.Add(500*time.Millisecond), time.Second).State; s != StateReady {
		t.Errorf("undecodable heartbeat: %s, want ready by the reader's timeout", s)
	}
}
