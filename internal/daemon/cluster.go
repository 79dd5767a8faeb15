package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/cluster"
	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/jobs"
	"github.com/cedana/cedana/internal/storage"
	"github.com/cedana/cedana/internal/store"
)

// Cluster mode (docs/cluster.md). The daemon joins the cluster's NATS
// (embedded or external), heartbeats its capacity, records its jobs in
// the cedana_jobs bucket, and answers other nodes on the subjects
// cedana.node.<name>.<verb>. Every verb that mirrors a gRPC method calls
// the same service method the gRPC server calls, with the same protobuf
// messages (as protojson): there is no second implementation.
//
//	verb            request → reply                    service method
//	list            ListJobsRequest → ListJobsResponse ListJobs (local)
//	get             GetJobRequest → Job                GetJob
//	dump            DumpJobRequest → Checkpoint        DumpJob
//	restore         RestoreJobRequest → Job            RestoreJob
//	kill            KillJobRequest → Job               KillJob
//	remove          RemoveJobRequest → RemoveJobResponse RemoveJob
//	migrate         MigrateRequest → MigrateResponse   Migrate (on the job's owner)
//	migrate-in      migrateIn → migrateInReply         (target side, migrate_target.go)
//	migrate-resume  migrateResume → Job                (target side)
//	migrate-abort   migrateAbort → {}                  (target side)
//	run             RunRequest → Job                   Run (node = this node)
//	drain-node      DrainNodeRequest → DrainNodeResponse DrainNode
//	resume-node     ResumeNodeRequest → ResumeNodeResponse ResumeNode

// ArchivesBucket is the JetStream object store that carries archives
// between nodes.
const ArchivesBucket = "cedana_archives"

// clusterNode is the daemon's membership of a cluster.
type clusterNode struct {
	node    *cluster.Node
	records *cluster.Jobs
	objects *storage.JetStream
	svc     *service
	m       *jobs.Manager
	log     *slog.Logger
	subs    []*nats.Subscription
	// transfer is how archives move: transferStream or transferObjectStore.
	transfer string

	mu      sync.Mutex
	pending map[string]*pendingImport // imported jobs awaiting resume or abort, by job ID
	// importing: jobs a migration is restoring here (before pending).
	importing map[string]bool
	// lazySources: the node each lazily imported job came from (lazy.go).
	lazySources map[string]string
	// pushes: archives arriving while their source writes them, by job
	// ID (push.go).
	pushes map[string]*pushIn
	// aborted: migration attempts their source gave up on, by job ID and
	// attempt, when they were heard (a migrate-in still restoring drops
	// its copy at once instead of waiting to settle).
	aborted map[[2]string]time.Time

	fo *failover // leases, fencing and failover (failover.go)
	// drain is the node's draining mark (drain.go); placed, the jobs
	// this daemon placed lately (placement.go).
	drain  *drainMark
	placed placements
}

// isPending reports whether job id is a migration's stopped copy here,
// not yet this node's.
func (c *clusterNode) isPending(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.pending[id]
	return ok || c.importing[id]
}

// setImporting marks job id as being imported by a migration (restored
// here, stopped) until it is pending or gone.
func (c *clusterNode) setImporting(id string, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.importing == nil {
		c.importing = map[string]bool{}
	}
	if on {
		c.importing[id] = true
	} else {
		delete(c.importing, id)
	}
}

// startCluster joins the cluster configured in cfg.Cluster and serves
// this node's subjects.
func startCluster(ctx context.Context, cfg config.Config, engine *checkpoint.Service, svc *service, m *jobs.Manager, log *slog.Logger) (*clusterNode, error) {
	cc := cfg.Cluster
	o := cluster.Options{
		Node: cc.Node, CredsFile: cc.NATSCreds, CAFile: cc.CA, StateDir: cfg.Daemon.StateDir,
		Listen: cc.NATSListen, NodeTimeout: cc.NodeTimeout.Duration, Replicas: cc.Replicas,
	}
	for _, u := range strings.Split(cc.NATSURLs, ",") {
		if u = strings.TrimSpace(u); u != "" {
			o.URLs = append(o.URLs, u)
		}
	}
	if cc.NATSTokenFile != "" {
		b, err := os.ReadFile(cc.NATSTokenFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.nats_token_file: %w", err)
		}
		if o.Token = strings.TrimSpace(string(b)); o.Token == "" {
			return nil, fmt.Errorf("cluster.nats_token_file %s is empty", cc.NATSTokenFile)
		}
	}
	c := &clusterNode{svc: svc, m: m, log: log, pending: map[string]*pendingImport{}, transfer: cc.Transfer}
	if c.transfer == "" {
		c.transfer = transferStream
	}
	if n := m.RemovePartialArchives(); n > 0 {
		log.Info("removed archives that were arriving when the daemon stopped", "count", n)
	}
	var err error
	if c.drain, err = loadDrainMark(cfg.Daemon.StateDir); err != nil {
		return nil, err
	}
	c.placed.keep = 3 * cc.NodeTimeout.Duration
	criuVersion := ""
	if engine != nil {
		if v, err := engine.CRIU().Version(); err == nil {
			criuVersion = criu.FormatVersion(v)
		}
	}
	n, err := cluster.Join(ctx, o, func() cluster.Capacity { return c.capacity(criuVersion) }, log)
	if err != nil {
		return nil, fmt.Errorf("join the cluster: %w", err)
	}
	c.node = n
	if c.records, err = n.Jobs(ctx); err != nil {
		n.Close()
		return nil, err
	}
	c.objects, err = storage.OpenJetStreamShared(ctx, n.BulkJetStream(), storage.JetStreamConfig{
		URL: n.Describe(), Bucket: ArchivesBucket, CreateBucket: true, Replicas: n.Replicas(),
	})
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("the cluster's archive store: %w", err)
	}
	if c.fo, err = newFailover(ctx, c, cfg, cfg.Storage.Backend != "" && cfg.Storage.Backend != "local"); err != nil {
		n.Close()
		return nil, err
	}
	if err := c.shareTemplates(ctx, cfg); err != nil {
		n.Close()
		return nil, err
	}
	// Rule 5: nothing found here runs again before the record says so.
	m.SetGate(c.fo.gate)
	m.SetOnLazyFailed(c.lazyFailed)
	if err := c.fo.startWatchdog(cfg.Daemon.StateDir); err != nil {
		n.Close()
		return nil, fmt.Errorf("the fence watchdog: %w", err)
	}
	svc.cl = c // before serving: handlers forward through it
	if err := c.serve(); err != nil {
		svc.cl = nil
		c.close()
		return nil, err
	}
	log.Info("joined the cluster", "node", n.Name(), "nats", n.Describe(), "replicas", n.Replicas())
	return c, nil
}

// close leaves the cluster: the other nodes see this one down after the
// node timeout.
func (c *clusterNode) close() {
	for _, s := range c.subs {
		_ = s.Unsubscribe()
	}
	c.mu.Lock()
	for _, p := range c.pending {
		p.timer.Stop()
	}
	c.mu.Unlock()
	c.node.Close()
}

// capacity is what each heartbeat reports.
func (c *clusterNode) capacity(criuVersion string) cluster.Capacity {
	cp := cluster.Capacity{CPUs: runtime.NumCPU(), FreeMemory: memAvailable(), CRIUVersion: criuVersion, Draining: c.drain.draining()}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if js, err := c.m.List(ctx); err == nil {
		for _, j := range js {
			if jobs.State(j.State) == jobs.Running || jobs.State(j.State) == jobs.Dumping {
				cp.RunningJobs++
			}
		}
	}
	return cp
}

// memAvailable reads MemAvailable from /proc/meminfo, in bytes.
func memAvailable() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// recordLocalJobs forgets, once the daemon has recovered its jobs, what
// is left here of jobs another node owns and that do not run (a migration
// that failed while this daemon was down). Running copies of such jobs
// were ended by the gate during recovery; records of local jobs are made
// by the sync loop (failover.go).
func (c *clusterNode) recordLocalJobs(ctx context.Context) {
	js, err := c.m.List(ctx)
	if err != nil {
		return
	}
	for _, j := range js {
		if jobs.State(j.State) == jobs.Moved {
			continue // the history of a job another node runs now
		}
		rec, err := c.records.Get(ctx, j.ID)
		switch {
		case err == nil && rec.Owner != c.node.Name() && !(jobs.State(j.State) == jobs.Running || jobs.State(j.State) == jobs.Dumping):
			// Rule 5 of docs/cluster.md: another node owns the job; what is
			// left of it here (a migration that failed while this daemon
			// was down) is forgotten, keeping nothing that could run.
			// Discard, not Remove: it never kills through the job's
			// cgroup, which a copy on this machine may share.
			if err := c.m.Discard(ctx, j.ID); err != nil {
				c.log.Warn("forget a stale copy of a job another node owns", "job", j.ID, "owner", rec.Owner, "err", err)
			} else {
				c.log.Info("forgot a stale copy of a job another node owns", "job", j.ID, "owner", rec.Owner)
			}
		}
	}
}

// record creates the cluster record of a job this node runs, and takes
// its lease (through the sync loop, at once).
func (c *clusterNode) record(ctx context.Context, j *store.Job) {
	if j == nil {
		return
	}
	_, err := c.records.Create(ctx, cluster.JobRecord{ID: j.ID, Name: j.Name, Spec: spec(j), Failover: c.fo.canFailOver(j)})
	if err != nil && !errors.Is(err, cluster.ErrJobExists) {
		c.log.Warn("record the job in the cluster", "job", j.ID, "err", err)
	}
	c.fo.nudge()
}

// forget deletes the cluster record of a job this node removed.
func (c *clusterNode) forget(ctx context.Context, id string) {
	rec, err := c.records.Get(ctx, id)
	if err != nil || rec.Owner != c.node.Name() {
		return
	}
	if err := c.records.Delete(ctx, rec); err != nil {
		c.log.Warn("delete the job's cluster record", "job", id, "err", err)
	}
}

// nameTaken reports whether another job of the cluster has name.
func (c *clusterNode) nameTaken(ctx context.Context, name string) (string, bool) {
	recs, err := c.records.List(ctx)
	if err != nil {
		return "", false
	}
	for _, r := range recs {
		if r.Name == name {
			return r.Owner, true
		}
	}
	return "", false
}

// owner finds the node that owns the job ref (an ID or a name).
func (c *clusterNode) owner(ctx context.Context, ref string) (cluster.JobRecord, error) {
	if rec, err := c.records.Get(ctx, ref); err == nil {
		return rec, nil
	}
	recs, err := c.records.List(ctx)
	if err != nil {
		return cluster.JobRecord{}, err
	}
	for _, r := range recs {
		if r.Name == ref {
			return r, nil
		}
	}
	return cluster.JobRecord{}, fmt.Errorf("no job %q on any node of the cluster: %w", ref, store.ErrNotFound)
}

// serve subscribes this node's verbs.
func (c *clusterNode) serve() error {
	const quick, long = 30 * time.Second, 15 * time.Minute
	s := c.svc
	verbs := []struct {
		name    string
		timeout time.Duration
		h       cluster.Handler
	}{
		{"list", quick, unary(func(ctx context.Context, r *pb.ListJobsRequest) (*pb.ListJobsResponse, error) {
			r.Local = true
			return s.ListJobs(ctx, r)
		})},
		{"get", quick, unary(s.GetJob)},
		{"dump", long, unary(s.DumpJob)},
		{"restore", long, unary(s.RestoreJob)},
		{"kill", quick, unary(s.KillJob)},
		{"remove", quick, unary(s.RemoveJob)},
		{"migrate", long, unary(s.Migrate)},
		{"migrate-push", quick, c.unlessDraining(c.handleMigratePush)},
		{"migrate-in", long, c.unlessDraining(c.handleMigrateIn)},
		{"run", quick, unary(s.Run)},
		{"drain-node", 4 * long, unary(s.DrainNode)},
		{"resume-node", quick, unary(s.ResumeNode)},
		{"migrate-resume", quick, c.handleMigrateResume},
		{"migrate-abort", quick, c.handleMigrateAbort},
		{"migrate-memory", long, c.handleMigrateMemory},
	}
	for _, v := range verbs {
		sub, err := c.node.Serve(v.name, v.timeout, remoteCode, v.h)
		if err != nil {
			return err
		}
		c.subs = append(c.subs, sub)
	}
	return nil
}

// unary adapts a service method to a NATS verb: protojson in and out.
func unary[Req, Resp proto.Message](call func(context.Context, Req) (Resp, error)) cluster.Handler {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		var req Req
		req = req.ProtoReflect().Type().New().Interface().(Req)
		if err := protojson.Unmarshal(raw, req); err != nil {
			return nil, status.Error(codes.InvalidArgument, "unreadable request: "+err.Error())
		}
		resp, err := call(ctx, req)
		if err != nil {
			return nil, err
		}
		b, err := protojson.Marshal(resp)
		return json.RawMessage(b), err
	}
}

// remoteCode carries a handler's gRPC status code to the caller.
func remoteCode(err error) string {
	if errors.Is(err, cluster.ErrStaleEpoch) {
		return cluster.CodeStaleEpoch
	}
	return "grpc-" + strconv.Itoa(int(status.Code(toStatus(err))))
}

// callUnary calls verb on node with a protobuf request and reply; a
// remote error comes back as the gRPC status the remote service returned.
func (c *clusterNode) callUnary(ctx context.Context, node, verb string, req, resp proto.Message) error {
	b, err := protojson.Marshal(req)
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := c.node.Call(ctx, node, verb, json.RawMessage(b), &raw); err != nil {
		return fromRemote(err)
	}
	if err := protojson.Unmarshal(raw, resp); err != nil {
		return fmt.Errorf("%s on node %s: unreadable reply: %w", verb, node, err)
	}
	return nil
}

// fromRemote turns a remote gRPC error back into its status.
func fromRemote(err error) error {
	var re *cluster.RemoteError
	if errors.As(err, &re) {
		if n, ok := strings.CutPrefix(re.Code, "grpc-"); ok {
			if code, cerr := strconv.Atoi(n); cerr == nil {
				return status.Error(codes.Code(code), fmt.Sprintf("node %s: %s", re.Node, re.Message))
			}
		}
	}
	if errors.Is(err, cluster.ErrNodeUnreachable) {
		return status.Error(codes.Unavailable, err.Error())
	}
	return err
}

// forward runs a job operation on the node that owns the job, when it is
// not this one. ok is false when the job is this node's (or unknown).
func (c *clusterNode) forward(ctx context.Context, ref, verb string, req, resp proto.Message) (bool, error) {
	rec, err := c.owner(ctx, ref)
	if err != nil || rec.Owner == c.node.Name() {
		return false, nil
	}
	return true, c.callUnary(ctx, rec.Owner, verb, req, resp)
}

// listJobs gathers the jobs of every node that answers (of node only,
// when set), each tagged with its node; jobs whose owner does not answer
// are listed from the cluster's record with the state "unknown".
func (c *clusterNode) listJobs(ctx context.Context, node string) (*pb.ListJobsResponse, error) {
	nodes, err := c.node.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	type result struct {
		node string
		jobs []*pb.Job
		err  error
	}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		res []result
	)
	for _, n := range nodes {
		if node != "" && n.Name != node {
			continue
		}
		// A node whose heartbeat is late (down) is asked too, briefly: a
		// busy node still answers, and its jobs are better listed than
		// guessed.
		wait := 5 * time.Second
		if n.State == cluster.StateDown {
			wait = time.Second
		}
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			var out pb.ListJobsResponse
			var err error
			if name == c.node.Name() {
				var r *pb.ListJobsResponse
				if r, err = c.svc.ListJobs(ctx, &pb.ListJobsRequest{Local: true}); err == nil {
					out.Jobs = r.Jobs
				}
			} else {
				cctx, cancel := context.WithTimeout(ctx, wait)
				err = c.callUnary(cctx, name, "list", &pb.ListJobsRequest{Local: true}, &out)
				cancel()
			}
			mu.Lock()
			res = append(res, result{node: name, jobs: out.Jobs, err: err})
			mu.Unlock()
		}(n.Name)
	}
	wg.Wait()
	out := &pb.ListJobsResponse{}
	seen := map[string]bool{}
	answered := map[string]bool{}
	for _, r := range res {
		if r.err != nil {
			c.log.Warn("list the jobs of a node", "node", r.node, "err", r.err)
			continue
		}
		answered[r.node] = true
		for _, j := range r.jobs {
			j.Node = r.node
			seen[j.Id] = true
			out.Jobs = append(out.Jobs, j)
		}
	}
	if recs, err := c.records.List(ctx); err == nil {
		for _, r := range recs {
			if seen[r.ID] || answered[r.Owner] || (node != "" && r.Owner != node) {
				continue
			}
			j := &pb.Job{Id: r.ID, Name: r.Name, Node: r.Owner, State: "unknown", Error: "its node does not answer"}
			switch {
			case r.State == cluster.JobLost:
				j.State, j.Error = cluster.JobLost, r.Reason
			case r.Owner == "":
				j.State, j.Error = "unknown", "no node runs it now: "+r.Reason
			}
			out.Jobs = append(out.Jobs, j)
		}
	}
	sort.SliceStable(out.Jobs, func(i, k int) bool { return out.Jobs[i].CreatedUnixMs < out.Jobs[k].CreatedUnixMs })
	return out, nil
}

// listNodes is ListNodes in cluster mode.
func (c *clusterNode) listNodes(ctx context.Context) (*pb.ListNodesResponse, error) {
	nodes, err := c.node.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := &pb.ListNodesResponse{}
	for _, n := range nodes {
		out.Nodes = append(out.Nodes, &pb.Node{Name: n.Name, State: n.State, LastHeartbeatUnixMs: n.Heartbeat.UnixMilli(),
			Cpus: int32(n.CPUs), FreeMemory: n.FreeMemory, RunningJobs: int32(n.RunningJobs), CriuVersion: n.CRIUVersion})
	}
	return out, nil
}
