package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NodesBucket is the KV bucket of heartbeats.
const NodesBucket = "cedana_nodes"

// Node states as `cedana nodes` shows them.
const (
	StateReady    = "ready"
	StateDown     = "down"
	StateDraining = "draining"
)

// NodeInfo is one node as the cluster sees it.
type NodeInfo struct {
	Name string `json:"name"`
	// State is ready, draining or down (no heartbeat for the node timeout).
	State string `json:"state"`
	// Heartbeat is the NATS server's time of the node's last heartbeat.
	Heartbeat time.Time `json:"last_heartbeat"`
	Capacity
}

// heartbeat is the value stored in the bucket.
type heartbeat struct {
	Capacity
	// Timeout is the sender's node timeout, so that every reader judges
	// it by the same rule.
	TimeoutMS int64 `json:"timeout_ms"`
}

// ensureBuckets creates the nodes bucket, or checks it exists.
func (n *Node) ensureBuckets(ctx context.Context) error {
	kv, err := n.bucket(ctx, jetstream.KeyValueConfig{
		Bucket:      NodesBucket,
		Description: "cedana node heartbeats (docs/cluster.md)",
		History:     1,
		// A node silent for three timeouts disappears from the list.
		TTL: 3 * n.opts.NodeTimeout,
	})
	n.nodes = kv
	return err
}

// bucket creates (or updates) a KV bucket with the cluster's replication.
// A cluster that is still forming may refuse replicas for a few seconds:
// it retries for up to 15 s, then fails saying what to change — never
// falling back to fewer copies than configured.
func (n *Node) bucket(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = n.replicas()
	end := time.Now().Add(15 * time.Second)
	for {
		kv, err := n.js.CreateOrUpdateKeyValue(ctx, cfg)
		if err == nil {
			return kv, nil
		}
		if cfg.Replicas == 1 || time.Now().After(end) || ctx.Err() != nil {
			hint := ""
			if cfg.Replicas > 1 {
				hint = fmt.Sprintf(" (with %d replicas: does the NATS cluster have %d JetStream servers? otherwise set cluster.replicas)", cfg.Replicas, cfg.Replicas)
			}
			return nil, fmt.Errorf("create the %s bucket%s: %w", cfg.Bucket, hint, err)
		}
		n.log.Info("NATS cluster not ready for replicated buckets yet; retrying", "bucket", cfg.Bucket, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// replicas: as configured, else three when the server is part of a NATS
// cluster and one when it is a single server (embedded, this node's or
// another daemon's).
func (n *Node) replicas() int {
	switch {
	case n.opts.Replicas > 0:
		return n.opts.Replicas
	case n.nc.ConnectedClusterName() == "":
		return 1
	}
	return 3
}

// heartbeat records this node's capacity now.
func (n *Node) heartbeat(ctx context.Context) error {
	var c Capacity
	if n.report != nil {
		c = n.report()
	}
	b, err := json.Marshal(heartbeat{Capacity: c, TimeoutMS: n.opts.NodeTimeout.Milliseconds()})
	if err != nil {
		return err
	}
	sent := time.Now()
	if _, err := n.nodes.Put(ctx, n.opts.Node, b); err != nil {
		return fmt.Errorf("heartbeat of node %s: %w", n.opts.Node, err)
	}
	self := decodeNode(n.opts.Node, b, sent, sent, n.opts.NodeTimeout) // as a reader sees it
	n.lastMu.Lock()
	n.last = self
	n.lastMu.Unlock()
	return nil
}

// Self is this node as its last heartbeat described it, as the others
// read it from the nodes bucket (the heartbeat's time is this node's
// clock): a node's view of itself needs no read of the bucket, which a
// replicated bucket may answer late or from a replica behind the write.
func (n *Node) Self() NodeInfo {
	n.lastMu.Lock()
	defer n.lastMu.Unlock()
	return n.last
}

// Beat sends a heartbeat now, so that a change of this node's capacity
// or state (a job started, draining set or cleared) is seen by the others
// before the next tick.
func (n *Node) Beat(ctx context.Context) error { return n.heartbeat(ctx) }

// heartbeats sends a heartbeat every third of the node timeout until ctx
// ends. A failed heartbeat is retried at the next tick: the connection
// reconnects by itself.
func (n *Node) heartbeats(ctx context.Context) {
	defer n.wg.Done()
	t := time.NewTicker(n.opts.NodeTimeout / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			hctx, cancel := context.WithTimeout(ctx, n.opts.NodeTimeout/3)
			if err := n.heartbeat(hctx); err != nil && ctx.Err() == nil {
				n.log.Warn("heartbeat failed", "err", err)
			}
			cancel()
		}
	}
}

// Nodes lists every node that sent a heartbeat within three node
// timeouts, by name. A node is down when its last heartbeat, by the NATS
// server's clock, is older than its node timeout by this node's clock:
// membership is for placement and display; ownership of jobs never
// depends on it (docs/cluster.md).
//
// A read that times out inside JetStream while the caller's context is
// still live is tried again, up to three times in all: right after a
// NATS server of the cluster dies, its streams elect new leaders, and
// reads fail for a few seconds even once heartbeats land again (seen:
// `cedana nodes` worked, the migrate just after it timed out).
func (n *Node) Nodes(ctx context.Context) ([]NodeInfo, error) {
	var (
		out []NodeInfo
		err error
	)
	for range 3 {
		out, err = n.nodesOnce(ctx)
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			break
		}
	}
	return out, err
}

func (n *Node) nodesOnce(ctx context.Context) ([]NodeInfo, error) {
	keys, err := n.nodes.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	now := time.Now()
	var out []NodeInfo
	for _, k := range keys {
		e, err := n.nodes.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", k, err)
		}
		out = append(out, decodeNode(k, e.Value(), e.Created(), now, n.opts.NodeTimeout))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// decodeNode turns a heartbeat into a NodeInfo as seen at now.
func decodeNode(name string, value []byte, at, now time.Time, fallback time.Duration) NodeInfo {
	info := NodeInfo{Name: name, Heartbeat: at, State: StateReady}
	var hb heartbeat
	timeout := fallback
	if err := json.Unmarshal(value, &hb); err == nil {
		info.Capacity = hb.Capacity
		if hb.TimeoutMS > 0 {
			timeout = time.Duration(hb.TimeoutMS) * time.Millisecond
		}
	}
	switch {
	case now.Sub(at) > timeout:
		info.State = StateDown
	case info.Draining:
		info.State = StateDraining
	}
	return info
}
