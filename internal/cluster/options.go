package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// DefaultNodeTimeout is how long a node may go without a heartbeat before
// the others consider it down.
const DefaultNodeTimeout = 10 * time.Second

// ErrInsecure means a configuration would run the cluster anonymously on
// a non-loopback address.
var ErrInsecure = errors.New("a cluster never runs anonymously on a non-loopback address")

// Options configure a node.
type Options struct {
	// Node is this node's name, unique in the cluster ("" = the hostname).
	Node string
	// URLs are the NATS servers to connect to. Empty: start an embedded
	// server in StateDir.
	URLs []string
	// CredsFile is a NATS credentials file (JWT and seed) for URLs.
	CredsFile string
	// CAFile verifies the servers of tls:// URLs ("" = system roots).
	CAFile string
	// StateDir holds the embedded server's JetStream store (StateDir/nats).
	StateDir string
	// Listen is the embedded server's client address ("" = 127.0.0.1 on a
	// free port). Other daemons join the embedded server through it.
	Listen string
	// Token authenticates clients of the embedded server; required when
	// Listen is not a loopback address.
	Token string
	// NodeTimeout: a node without a heartbeat for this long is down.
	NodeTimeout time.Duration
	// Replicas of the cluster's buckets (0: 3 when the NATS server is part
	// of a cluster, 1 on a single server). More than the cluster's
	// JetStream servers is an error, not a silent downgrade.
	Replicas int
}

// withDefaults fills in the node name and timeout.
func (o Options) withDefaults() (Options, error) {
	if o.Node == "" {
		h, err := os.Hostname()
		if err != nil {
			return o, fmt.Errorf("node name: %w", err)
		}
		o.Node = h
	}
	if err := validNodeName(o.Node); err != nil {
		return o, err
	}
	if o.NodeTimeout <= 0 {
		o.NodeTimeout = DefaultNodeTimeout
	}
	if o.NodeTimeout < time.Second {
		return o, fmt.Errorf("node timeout %v is too short (at least 1s)", o.NodeTimeout)
	}
	return o, nil
}

// validNodeName accepts names usable as a NATS subject token and KV key.
func validNodeName(n string) error {
	if len(n) > 64 {
		return fmt.Errorf("node name %q is longer than 64 characters", n)
	}
	for _, r := range n {
		ok := r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return fmt.Errorf("node name %q: use letters, digits, '-' and '_' only", n)
		}
	}
	return nil
}

// checkURLs refuses anonymous connections to non-loopback servers.
func checkURLs(urls []string, creds string) error {
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return fmt.Errorf("NATS URL %q: want nats://[user:pass@]host:port or tls://…", redact(raw))
		}
		switch u.Scheme {
		case "nats", "tls":
		default:
			return fmt.Errorf("NATS URL %q: scheme must be nats:// or tls://", redact(raw))
		}
		if u.User == nil && creds == "" && !isLoopback(u.Hostname()) {
			return fmt.Errorf("%w: %s has no credentials; put user:pass@ or a token@ in the URL, or give --nats-creds FILE", ErrInsecure, redact(raw))
		}
	}
	return nil
}

// checkListen refuses an embedded server on a non-loopback address
// without a token.
func checkListen(listen, token string) error {
	if listen == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--nats-listen %q: want HOST:PORT", listen)
	}
	if !isLoopback(host) && token == "" {
		return fmt.Errorf("%w: the embedded NATS server would listen on %s without a token; set cluster.nats_token_file", ErrInsecure, listen)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// redact hides the password or token of a URL for messages and logs.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		if i := strings.LastIndex(raw, "@"); i >= 0 {
			return "…@" + raw[i+1:]
		}
		return raw
	}
	u.User = url.User("redacted")
	return u.String()
}
