package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsServerVersion is built by scripts/setup-servers.sh into the server
// cache; keep the two in step.
const natsServerVersion = "v2.15.3"

// natsServerBin finds the nats-server the setup built, or skips (fails in
// CI, where `make setup` must have built it).
func natsServerBin(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("CEDANA_SERVER_CACHE")
	if cache == "" {
		cache = "/var/cache/cedana/bin"
	}
	bin := filepath.Join(cache, "nats-server-"+natsServerVersion)
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s missing in CI: `make setup` builds it (scripts/setup-servers.sh)", bin)
		}
		t.Skipf("skipping: %s not built (run `make setup`)", bin)
	}
	return bin
}

// natsCluster is three nats-server processes routed into one JetStream
// cluster on loopback, with a user and password.
type natsCluster struct {
	t      *testing.T
	bin    string
	dir    string
	client []int // client ports
	route  []int
	procs  []*exec.Cmd
}

const natsUser, natsPass = "cedana", "test-password-not-secret"

func startNATSCluster(t *testing.T) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t, bin: natsServerBin(t), dir: t.TempDir()}
	for i := 0; i < 3; i++ {
		c.client = append(c.client, freePort(t))
		c.route = append(c.route, freePort(t))
	}
	c.procs = make([]*exec.Cmd, 3)
	for i := 0; i < 3; i++ {
		c.start(i)
	}
	t.Cleanup(func() {
		for i := range c.procs {
			c.kill(i)
		}
	})
	// Ready when JetStream answers through the cluster (a meta leader exists).
	nc, err := nats.Connect(c.url(0), nats.Timeout(2*time.Second), nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the NATS cluster has no JetStream leader after 20s: %v", err)
		}
	}
	return c
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (c *natsCluster) url(i int) string {
	return fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", natsUser, natsPass, c.client[i])
}

func (c *natsCluster) urls() []string { return []string{c.url(0), c.url(1), c.url(2)} }

// start writes server i's configuration and starts it.
func (c *natsCluster) start(i int) {
	var routes []string
	for j := range c.route {
		if j != i {
			routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", c.route[j]))
		}
	}
	conf := fmt.Sprintf(`server_name: s%d
listen: 127.0.0.1:%d
authorization { user: %s, password: %s }
jetstream { store_dir: %q }
cluster {
  name: cedana-test
  listen: 127.0.0.1:%d
  routes: [%s]
}
`, i, c.client[i], natsUser, natsPass, filepath.Join(c.dir, fmt.Sprintf("js%d", i)), c.route[i], strings.Join(routes, ", "))
	path := filepath.Join(c.dir, fmt.Sprintf("s%d.conf", i))
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		c.t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(c.dir, fmt.Sprintf("s%d.log", i)))
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "-c", path)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	log.Close()
	c.procs[i] = cmd
}

// kill stops server i by its PID.
func (c *natsCluster) kill(i int) {
	if p := c.procs[i]; p != nil && p.Process != nil {
		_ = p.Process.Signal(syscall.SIGKILL)
		_, _ = p.Process.Wait()
		c.procs[i] = nil
	}
}

// TestRealCluster: three daemons, each connected to its own server of a
// three-process NATS cluster, with replicated (R3) buckets: they see each
// other, exactly one claims a dead owner's job, and leases keep being
// renewed while one NATS server is killed.
func TestRealCluster(t *testing.T) {
	c := startNATSCluster(t)
	// The product's default node timeout: what the guarantee is stated
	// for. A client reconnect plus a stream leader's re-election took
	// more than 4.8 s on a loaded 2-core machine, so 6 s was too short.
	const period = 10 * time.Second
	var nodes []*Node
	for i := 0; i < 3; i++ {
		// Each daemon prefers its own server and knows the others.
		urls := append([]string{c.url(i)}, c.urls()...)
		nodes = append(nodes, join(t, Options{Node: fmt.Sprintf("n%d", i), URLs: urls, NodeTimeout: period}, Capacity{CPUs: i + 1}))
	}
	ctx := context.Background()
	info, err := nodes[0].js.KeyValue(ctx, NodesBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := info.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas; r != 3 {
		t.Errorf("nodes bucket has %d replicas, want 3 on a three-server cluster", r)
	}
	got := nodeStates(t, nodes[2])
	if len(got) != 3 || got["n0"].State != StateReady || got["n1"].CPUs != 2 {
		t.Fatalf("n2 sees %+v, want three ready nodes", got)
	}

	var ls []*Leases
	var js []*Jobs
	for _, n := range nodes {
		l, err := n.Leases(ctx, period)
		if err != nil {
			t.Fatal(err)
		}
		j, err := n.Jobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ls, js = append(ls, l), append(js, j)
	}

	// Node 1 owns a job and keeps renewing while NATS server 0 dies.
	rec, err := js[1].Create(ctx, JobRecord{ID: "job-r3", Failover: true})
	if err != nil {
		t.Fatal(err)
	}
	lease, err := ls[1].Acquire(ctx, rec.ID, rec.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	c.kill(0)
	for end := time.Now().Add(2 * period); time.Now().Before(end); time.Sleep(period / 4) {
		rctx, cancel := context.WithTimeout(ctx, period/4)
		err := ls[1].Renew(rctx, lease)
		cancel()
		if errors.Is(err, ErrLeaseLost) {
			t.Fatalf("lease lost while one NATS server of three was down: %v", err)
		}
		if time.Now().After(lease.Deadline()) {
			t.Fatalf("no successful renewal until the deadline with two servers of three up (last error %v)", err)
		}
		// While the cluster re-elects, Acquire may also fail for want
		// of an answer; what it must never do is succeed.
		if _, err := ls[2].Acquire(ctx, rec.ID, rec.Epoch); err == nil {
			t.Fatal("node 2 acquired a lease that node 1 renews")
		}
	}

	// Node 1 dies; nodes 0 and 2 race for its job: one wins.
	var winners int
	for end := time.Now().Add(3 * period); time.Now().Before(end) && winners == 0; time.Sleep(50 * time.Millisecond) {
		for _, i := range []int{0, 2} {
			seen, err := js[i].Get(ctx, rec.ID)
			if err != nil {
				continue // a reconnecting client
			}
			if _, _, err := js[i].Claim(ctx, ls[i], seen); err == nil {
				winners++
				if time.Now().Before(lease.Deadline()) {
					t.Fatalf("node %d claimed before the old owner's deadline", i)
				}
			} else if !errors.Is(err, ErrLeaseHeld) && !errors.Is(err, ErrStaleEpoch) {
				t.Logf("node %d: %v", i, err)
			}
		}
	}
	if winners != 1 {
		t.Fatalf("%d claims succeeded, want exactly 1", winners)
	}
	if _, err := js[1].CommitCheckpoint(ctx, rec, "stale", time.Now()); !errors.Is(err, ErrStaleEpoch) {
		t.Errorf("the old owner's commit on R3: %v, want ErrStaleEpoch", err)
	}
}
