package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/cluster"
	"github.com/cedana/cedana/internal/jobs"
	"github.com/cedana/cedana/internal/store"
)

// Drain (docs/cluster.md, "Placement and drain"). `cedana node drain
// NAME` reaches NAME's daemon (the verb drain-node when NAME is another
// node), which
//
//  1. marks itself draining: a file in its state directory, so that the
//     mark survives a restart, and a heartbeat at once, so that the
//     others stop placing jobs on it;
//  2. migrates its running jobs away one by one, each with the same code
//     as `cedana migrate`, to the ready node cluster.Rank puts first
//     (counting the jobs this drain already placed); when that node
//     refuses and the job still runs here, to the next one;
//  3. reports, per job, where it went or why it stayed.
//
// A draining node refuses new jobs itself (Run, migrate-in), whatever
// its heartbeat said when the caller decided. `cedana node resume NAME`
// removes the mark. Draining again retries the jobs that stayed.

// drainFileName is the file in the daemon's state directory whose
// presence marks the node draining.
const drainFileName = "cluster-draining"

// drainTargets bounds how many nodes a drain tries for one job.
const drainTargets = 3

// notCluster is the refusal of cluster verbs outside cluster mode.
var notCluster = status.Error(codes.FailedPrecondition, "the daemon does not run in cluster mode: start it with --node NAME (and --nats URL to join a NATS cluster)")

// drainMark is the node's draining state, kept in its state directory.
type drainMark struct {
	path string
	on   atomic.Bool
	// busy serialises drains of this node: one from its own CLI and one
	// forwarded from another node would otherwise race for the same jobs.
	busy sync.Mutex
}

// loadDrainMark reads the mark from stateDir.
func loadDrainMark(stateDir string) (*drainMark, error) {
	d := &drainMark{path: filepath.Join(stateDir, drainFileName)}
	switch _, err := os.Stat(d.path); {
	case err == nil:
		d.on.Store(true)
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("read the node's draining mark: %w", err)
	}
	return d, nil
}

// draining reports whether the node is draining.
func (d *drainMark) draining() bool { return d != nil && d.on.Load() }

// set writes (durably) or removes the mark.
func (d *drainMark) set(on bool) error {
	if on {
		tmp := d.path + ".tmp"
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(f, "draining since %s (cedana node resume makes the node ready again)\n", time.Now().UTC().Format(time.RFC3339))
		if serr := f.Sync(); err == nil {
			err = serr
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, d.path)
		}
		if err != nil {
			_ = os.Remove(tmp)
			return err
		}
	} else if err := os.Remove(d.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if dir, err := os.Open(filepath.Dir(d.path)); err == nil {
		_ = dir.Sync()
		dir.Close()
	}
	d.on.Store(on)
	return nil
}

// DrainNode marks a node draining and migrates its running jobs away.
func (s *service) DrainNode(ctx context.Context, r *pb.DrainNodeRequest) (*pb.DrainNodeResponse, error) {
	if s.cl == nil {
		return nil, notCluster
	}
	out, err := s.cl.drainNode(ctx, r.GetNode())
	return out, toStatus(err)
}

// ResumeNode makes a draining node ready again.
func (s *service) ResumeNode(ctx context.Context, r *pb.ResumeNodeRequest) (*pb.ResumeNodeResponse, error) {
	if s.cl == nil {
		return nil, notCluster
	}
	out, err := s.cl.resumeNode(ctx, r.GetNode())
	return out, toStatus(err)
}

// reachNode checks that name is a node that can answer (listed, not
// down), for a verb that needs its daemon.
func (c *clusterNode) reachNode(ctx context.Context, name, what string) error {
	if name == "" {
		return status.Errorf(codes.InvalidArgument, "%s: which node?", what)
	}
	nodes, err := c.node.Nodes(ctx)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.Name != name {
			continue
		}
		if n.State == cluster.StateDown {
			return status.Errorf(codes.FailedPrecondition, "%s: node %s is down (no heartbeat since %s): its daemon must run to do this", what, name, n.Heartbeat.Format(time.RFC3339))
		}
		return nil
	}
	return status.Errorf(codes.NotFound, "%s: no node %q in the cluster (%s)", what, name, describeNodes(nodes))
}

// drainNode drains name: this node, or another through its daemon.
func (c *clusterNode) drainNode(ctx context.Context, name string) (*pb.DrainNodeResponse, error) {
	if name != c.node.Name() {
		if err := c.reachNode(ctx, name, "drain"); err != nil {
			return nil, err
		}
		var out pb.DrainNodeResponse
		if err := c.callUnary(ctx, name, "drain-node", &pb.DrainNodeRequest{Node: name}, &out); err != nil {
			return nil, err
		}
		return &out, nil
	}
	self := c.node.Name()
	c.drain.busy.Lock()
	defer c.drain.busy.Unlock()
	if err := c.drain.set(true); err != nil {
		return nil, fmt.Errorf("mark node %s draining: %w", self, err)
	}
	c.beat(ctx)
	c.log.Info("node draining: moving its running jobs away")
	js, err := c.m.List(ctx)
	if err != nil {
		return nil, err
	}
	out := &pb.DrainNodeResponse{}
	for _, j := range js {
		if st := jobs.State(j.State); st != jobs.Running && st != jobs.Dumping {
			continue // nothing runs: it stays, as a record and its checkpoints
		}
		if !c.drain.draining() { // node resume meanwhile: the rest stays
			out.Jobs = append(out.Jobs, &pb.DrainedJob{Id: j.ID, Name: j.Name,
				Error: fmt.Sprintf("stayed on node %s: the node was resumed during the drain", self)})
			continue
		}
		d := c.drainJob(ctx, j)
		c.log.Info("drain", "job", j.ID, "name", j.Name, "to", d.GetTo(), "error", d.GetError())
		out.Jobs = append(out.Jobs, d)
	}
	c.beat(ctx) // the reply's node counts what is left
	out.Node = c.selfNode()
	return out, nil
}

// drainJob moves one job away from this draining node.
func (c *clusterNode) drainJob(ctx context.Context, j *store.Job) *pb.DrainedJob {
	self := c.node.Name()
	res := &pb.DrainedJob{Id: j.ID, Name: j.Name}
	var refusals []string
	tried := map[string]bool{self: true}
	for len(tried) <= drainTargets {
		// A periodic checkpoint in progress ends first.
		if !c.waitRunning(ctx, j.ID) {
			refusals = append(refusals, "it no longer runs here")
			break
		}
		nodes, err := c.node.Nodes(ctx)
		if err != nil {
			refusals = append(refusals, err.Error())
			break
		}
		var target cluster.NodeInfo
		for _, n := range cluster.Rank(c.placed.count(nodes)) {
			if !tried[n.Name] {
				target = n
				break
			}
		}
		if target.Name == "" {
			if len(refusals) == 0 {
				refusals = append(refusals, fmt.Sprintf("no other ready node to move it to (%s)", describeNodes(nodes)))
			}
			break
		}
		tried[target.Name] = true
		m, err := c.migrate(ctx, &pb.MigrateRequest{Job: j.ID, To: target.Name})
		if err == nil {
			c.placed.add(target.Name, time.Now())
			res.To, res.DowntimeMs, res.Epoch, res.Placement = m.GetTo(), m.GetDowntimeMs(), m.GetEpoch(), cluster.Why(target)
			break
		}
		refusals = append(refusals, fmt.Sprintf("to %s: %v", target.Name, err))
		// Another node is tried only while the job still runs here: a
		// migration that failed after the hand-over belongs to its target.
		if cur, gerr := c.m.Get(ctx, j.ID); gerr != nil || jobs.State(cur.State) != jobs.Running {
			break
		}
	}
	switch {
	case res.To == "":
		res.Error = fmt.Sprintf("stayed on node %s: %s", self, strings.Join(refusals, "; "))
	case len(refusals) > 0:
		res.Error = "refused first: " + strings.Join(refusals, "; ")
	}
	return res
}

// waitRunning waits (up to a minute) for a job that is being checkpointed
// to run again; it reports whether the job runs here.
func (c *clusterNode) waitRunning(ctx context.Context, id string) bool {
	deadline := time.Now().Add(time.Minute)
	for {
		j, err := c.m.Get(ctx, id)
		if err != nil {
			return false
		}
		switch jobs.State(j.State) {
		case jobs.Running:
			return true
		case jobs.Dumping:
		default:
			return false
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// resumeNode makes name ready again: this node, or another through its
// daemon.
func (c *clusterNode) resumeNode(ctx context.Context, name string) (*pb.ResumeNodeResponse, error) {
	if name != c.node.Name() {
		if err := c.reachNode(ctx, name, "resume"); err != nil {
			return nil, err
		}
		var out pb.ResumeNodeResponse
		if err := c.callUnary(ctx, name, "resume-node", &pb.ResumeNodeRequest{Node: name}, &out); err != nil {
			return nil, err
		}
		return &out, nil
	}
	if err := c.drain.set(false); err != nil {
		return nil, fmt.Errorf("clear node %s's draining mark: %w", name, err)
	}
	c.beat(ctx)
	c.log.Info("node ready again")
	return &pb.ResumeNodeResponse{Node: c.selfNode()}, nil
}

// beat sends a heartbeat now (best effort: the next tick sends another).
func (c *clusterNode) beat(ctx context.Context) {
	if err := c.node.Beat(ctx); err != nil {
		c.log.Warn("heartbeat", "err", err)
	}
}

// selfNode is this node as its last heartbeat told the cluster. (It read
// the nodes bucket before: a read that timed out on a three-server
// cluster made a drain's reply say nothing of the node.)
func (c *clusterNode) selfNode() *pb.Node { return nodeToPB(c.node.Self()) }

func nodeToPB(n cluster.NodeInfo) *pb.Node {
	return &pb.Node{Name: n.Name, State: n.State, LastHeartbeatUnixMs: n.Heartbeat.UnixMilli(),
		Cpus: int32(n.CPUs), FreeMemory: n.FreeMemory, RunningJobs: int32(n.RunningJobs), CriuVersion: n.CRIUVersion}
}

// unlessDraining wraps a verb that brings a job to this node: a draining
// node refuses it.
func (c *clusterNode) unlessDraining(h cluster.Handler) cluster.Handler {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		if c.drain.draining() {
			return nil, status.Errorf(codes.FailedPrecondition, "node %s is draining: it takes no new job", c.node.Name())
		}
		return h(ctx, raw)
	}
}
