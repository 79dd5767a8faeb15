package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Node is this daemon's membership of the cluster. It is safe for
// concurrent use.
type Node struct {
	opts Options
	log  *slog.Logger
	srv  *server.Server // nil when connected to an external cluster
	nc   *nats.Conn
	js   jetstream.JetStream
	// bulk carries archive bytes (BulkConn), so that they never hold
	// back the heartbeats and lease renewals on nc.
	bulk   *nats.Conn
	bulkJS jetstream.JetStream
	nodes  jetstream.KeyValue
	report func() Capacity

	lastMu sync.Mutex
	last   NodeInfo // as this node's last heartbeat described it

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Capacity is what a node reports about itself with each heartbeat.
type Capacity struct {
	CPUs        int    `json:"cpus"`
	FreeMemory  uint64 `json:"free_memory"`
	RunningJobs int    `json:"running_jobs"`
	CRIUVersion string `json:"criu_version"`
	Draining    bool   `json:"draining,omitempty"`
}

// Join starts (or connects to) NATS, creates the cluster's buckets if they
// are missing, and starts heartbeating. report is called before each
// heartbeat; it must be quick.
func Join(ctx context.Context, o Options, report func() Capacity, log *slog.Logger) (*Node, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{opts: o, log: log.With("node", o.Node), report: report}
	if len(o.URLs) == 0 {
		if err := checkListen(o.Listen, o.Token); err != nil {
			return nil, err
		}
		if o.Replicas > 1 {
			return nil, fmt.Errorf("cluster.replicas is %d, but the embedded NATS server is a single server: use 1, or give --nats URLs of a real cluster", o.Replicas)
		}
		if n.srv, err = startEmbedded(o); err != nil {
			return nil, err
		}
	} else if err := checkURLs(o.URLs, o.CredsFile); err != nil {
		return nil, err
	}
	if n.nc, err = n.connect(""); err == nil {
		n.bulk, err = n.connect(" bulk")
	}
	if err != nil {
		n.Close()
		return nil, err
	}
	if n.js, err = jetstream.New(n.nc); err == nil {
		n.bulkJS, err = jetstream.New(n.bulk)
	}
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("JetStream: %w", err)
	}
	if err := n.ensureBuckets(ctx); err != nil {
		n.Close()
		return nil, err
	}
	if err := n.heartbeat(ctx); err != nil {
		n.Close()
		return nil, err
	}
	hctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.wg.Add(1)
	go n.heartbeats(hctx)
	return n, nil
}

// connect opens one of the node's connections (named "cedana NODE" and
// suffix): to its embedded server, or to an external cluster.
func (n *Node) connect(suffix string) (*nats.Conn, error) {
	if n.srv != nil {
		// Over loopback TCP rather than nats.InProcessServer: the
		// in-process pipe is unbuffered and moved archives at a fraction
		// of the speed (docs/cluster.md, measurements).
		return nats.Connect(n.srv.ClientURL(), nats.Token(n.opts.Token), nats.Name("cedana "+n.opts.Node+suffix),
			nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	}
	return connect(n.opts, suffix)
}

// connect dials an external NATS cluster.
func connect(o Options, suffix string) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("cedana " + o.Node + suffix),
		nats.MaxReconnects(-1), // keep trying: leases, not the connection, decide ownership
		nats.ReconnectWait(250 * time.Millisecond),
		nats.Timeout(5 * time.Second),
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	nc, err := nats.Connect(strings.Join(o.URLs, ","), opts...)
	if err != nil {
		return nil, explainConnect(o.URLs, err)
	}
	return nc, nil
}

// explainConnect names the servers (without secrets) and the likely fix.
func explainConnect(urls []string, err error) error {
	safe := make([]string, len(urls))
	for i, u := range urls {
		safe[i] = redact(u)
	}
	where := strings.Join(safe, ",")
	switch {
	case errors.Is(err, nats.ErrAuthorization), strings.Contains(err.Error(), "Authorization Violation"):
		return fmt.Errorf("NATS at %s refused the credentials: check the user:pass or token in --nats, or --nats-creds: %w", where, err)
	case errors.Is(err, nats.ErrNoServers):
		return fmt.Errorf("no NATS server reachable at %s: is nats-server running there, and the port open? %w", where, err)
	}
	return fmt.Errorf("connect to NATS at %s: %w", where, err)
}

// Name is this node's name.
func (n *Node) Name() string { return n.opts.Node }

// ClientURL is the address other daemons use to join this node's embedded
// server ("" when connected to an external cluster).
func (n *Node) ClientURL() string {
	if n.srv == nil {
		return ""
	}
	u, err := url.Parse(n.srv.ClientURL())
	if err != nil {
		return n.srv.ClientURL()
	}
	return u.String()
}

// ServerURL is the URL of the NATS server the node is connected to,
// without user or password.
func (n *Node) ServerURL() string { return n.nc.ConnectedUrlRedacted() }

// JetStream is the node's JetStream context, for the layers above.
func (n *Node) JetStream() jetstream.JetStream { return n.js }

// Conn is the node's NATS connection for control: heartbeats, leases,
// job records, requests between daemons.
func (n *Node) Conn() *nats.Conn { return n.nc }

// BulkConn is the node's connection for archive bytes (migration
// tunnels and transfers), and BulkJetStream its JetStream context (the
// cluster's object stores). nats.go writes a publish under the
// connection's lock, and a large one to a slow or stalled link holds it
// for as long as the write blocks: on one connection, every heartbeat
// and lease renewal would wait behind the archive (TestBulkConnStalled).
func (n *Node) BulkConn() *nats.Conn { return n.bulk }

// BulkJetStream is JetStream over BulkConn.
func (n *Node) BulkJetStream() jetstream.JetStream { return n.bulkJS }

// Close stops heartbeating (the others see this node down after the node
// timeout), disconnects, and stops the embedded server.
func (n *Node) Close() {
	if n.cancel != nil {
		n.cancel()
	}
	n.wg.Wait()
	for _, c := range []*nats.Conn{n.bulk, n.nc} {
		if c != nil {
			c.Close()
		}
	}
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
	}
}

// Replicas is the replication of the cluster's buckets and object stores.
func (n *Node) Replicas() int { return n.replicas() }

// Describe names the NATS servers the node uses, without secrets.
func (n *Node) Describe() string {
	if n.srv != nil {
		return "embedded NATS server " + n.ClientURL()
	}
	safe := make([]string, len(n.opts.URLs))
	for i, u := range n.opts.URLs {
		safe[i] = redact(u)
	}
	return strings.Join(safe, ",")
}
