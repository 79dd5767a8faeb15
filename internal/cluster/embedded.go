package cluster

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startEmbedded runs a NATS server with JetStream inside the daemon, its
// store in stateDir/nats, listening on listen (default: loopback, a free
// port).
func startEmbedded(o Options) (*server.Server, error) {
	host, port := "127.0.0.1", -1 // -1: a free port
	if o.Listen != "" {
		h, p, err := net.SplitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("--nats-listen %q: %w", o.Listen, err)
		}
		if port, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("--nats-listen %q: bad port", o.Listen)
		}
		host = h
	}
	dir := filepath.Join(o.StateDir, "nats")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create the embedded NATS store: %w", err)
	}
	opts := &server.Options{
		ServerName:    o.Node,
		Host:          host,
		Port:          port,
		JetStream:     true,
		StoreDir:      dir,
		Authorization: o.Token,
		NoSigs:        true, // the daemon owns the signals
		NoLog:         true,
		MaxPayload:    1 << 20,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded NATS server on %s did not become ready within 10s", net.JoinHostPort(host, strconv.Itoa(port)))
	}
	return s, nil
}
