package daemon

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/cluster"
)

// Placement: `cedana run --node NAME|auto` (docs/cluster.md, "Placement
// and drain"). The daemon the CLI talks to chooses the node — by name, or
// the ready node cluster.Rank puts first — and forwards the RunRequest to
// it on the verb "run", which calls the same Run method there. The target
// refuses by itself when it is draining, so a placement decided on a
// heartbeat a moment old cannot land a job on a node that has started to
// drain.

// autoNode is RunRequest.node's value for "choose for me".
const autoNode = "auto"

// placeRun decides where a Run goes. It returns why the job goes where it
// does ("" for a plain run), and the job when it was started on another
// node; a nil job and a nil error mean: run it here.
func (s *service) placeRun(ctx context.Context, r *pb.RunRequest) (string, *pb.Job, error) {
	if s.cl == nil {
		if r.GetNode() != "" {
			return "", nil, status.Error(codes.FailedPrecondition, "--node needs a daemon in cluster mode (cedana daemon start --node NAME); without it jobs run on the daemon's machine")
		}
		return "", nil, nil
	}
	return s.cl.placeRun(ctx, r)
}

// placeRun is placeRun in cluster mode.
func (c *clusterNode) placeRun(ctx context.Context, r *pb.RunRequest) (string, *pb.Job, error) {
	self, want := c.node.Name(), r.GetNode()
	if want == "" || want == self {
		// This node: its own mark, not its heartbeat, decides.
		if c.drain.draining() {
			return "", nil, status.Errorf(codes.FailedPrecondition,
				"node %s is draining: it takes no new job; run it on another node (--node NAME or --node auto) or make this one ready again (cedana node resume %s)", self, self)
		}
		if want == "" {
			return "", nil, nil
		}
		c.placed.add(self, time.Now())
		return fmt.Sprintf("asked for (--node %s)", want), nil, nil
	}
	nodes, err := c.node.Nodes(ctx)
	if err != nil {
		return "", nil, err
	}
	target, why, err := choose(c.placed.count(nodes), want)
	if err != nil {
		return "", nil, err
	}
	if target.Name == self {
		if c.drain.draining() { // heartbeat older than the mark
			return "", nil, status.Errorf(codes.FailedPrecondition, "node %s is draining: it takes no new job", self)
		}
		// Counted until a heartbeat sent after the job started (Run sends
		// one) is read: a replica may still serve an older one.
		c.placed.add(self, time.Now())
		return why, nil, nil
	}
	fwd := proto.Clone(r).(*pb.RunRequest)
	fwd.Node = target.Name
	sent := time.Now()
	var out pb.Job
	if err := c.callUnary(ctx, target.Name, "run", fwd, &out); err != nil {
		return "", nil, err
	}
	// The target sends a heartbeat once the job runs: a heartbeat newer
	// than sent counts it already.
	c.placed.add(target.Name, sent)
	out.Node, out.Placement = target.Name, why
	return why, &out, nil
}

// choose picks the node a new job goes to: want by name, or with "auto"
// the ready node cluster.Rank puts first. It says why, or why not.
func choose(nodes []cluster.NodeInfo, want string) (cluster.NodeInfo, string, error) {
	if want == autoNode {
		ranked := cluster.Rank(nodes)
		if len(ranked) == 0 {
			return cluster.NodeInfo{}, "", status.Errorf(codes.FailedPrecondition, "no ready node in the cluster to run the job on (%s)", describeNodes(nodes))
		}
		return ranked[0], fmt.Sprintf("auto: first of %d ready nodes (%s)", len(ranked), cluster.Why(ranked[0])), nil
	}
	for _, n := range nodes {
		if n.Name != want {
			continue
		}
		switch n.State {
		case cluster.StateReady:
			return n, fmt.Sprintf("asked for (--node %s)", want), nil
		case cluster.StateDraining:
			return n, "", status.Errorf(codes.FailedPrecondition, "node %s is draining: it takes no new job (cedana node resume %s makes it ready again)", want, want)
		default:
			return n, "", status.Errorf(codes.FailedPrecondition, "node %s is %s: no heartbeat since %s, it cannot take a job", want, n.State, n.Heartbeat.Format(time.RFC3339))
		}
	}
	return cluster.NodeInfo{}, "", status.Errorf(codes.NotFound, "no node %q in the cluster (%s)", want, describeNodes(nodes))
}

// describeNodes is "a: ready, b: draining" for messages.
func describeNodes(nodes []cluster.NodeInfo) string {
	if len(nodes) == 0 {
		return "no node has a heartbeat"
	}
	parts := make([]string, 0, len(nodes))
	for _, n := range nodes {
		parts = append(parts, n.Name+": "+n.State)
	}
	return "nodes: " + strings.Join(parts, ", ")
}

// placements remembers where this daemon put jobs in the last moments, so
// that the next choice counts them before the target's heartbeat does
// (heartbeats go every third of the node timeout; a drain or a script of
// `run --node auto` places jobs faster than that).
type placements struct {
	mu     sync.Mutex
	keep   time.Duration
	recent []placed
}

type placed struct {
	node string
	at   time.Time
}

// add remembers a job placed on node at at.
func (p *placements) add(node string, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.recent = append(p.recent, placed{node: node, at: at})
}

// count returns nodes with the remembered placements added to their
// running jobs, forgetting placements older than keep.
func (p *placements) count(nodes []cluster.NodeInfo) []cluster.NodeInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	now, keep := time.Now(), p.keep
	if keep <= 0 {
		keep = 30 * time.Second
	}
	kept := p.recent[:0]
	for _, x := range p.recent {
		if now.Sub(x.at) < keep {
			kept = append(kept, x)
		}
	}
	p.recent = kept
	return withPlaced(nodes, p.recent)
}

// withPlaced adds to each node the placements made after its heartbeat:
// a heartbeat sent later already counts them.
func withPlaced(nodes []cluster.NodeInfo, recent []placed) []cluster.NodeInfo {
	out := append([]cluster.NodeInfo(nil), nodes...)
	for i := range out {
		for _, x := range recent {
			if x.node == out[i].Name && x.at.After(out[i].Heartbeat) {
				out[i].RunningJobs++
			}
		}
	}
	return out
}
