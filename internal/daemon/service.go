package daemon

import (
	"context"
	"errors"
	"io"
	"os"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/cluster"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/jobs"
	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/storage"
	"github.com/cedana/cedana/internal/store"
	"github.com/cedana/cedana/internal/template"
)

// service implements the gRPC API over a jobs.Manager. It converts
// requests and replies and, in toStatus, errors; it holds no logic.
type service struct {
	pb.UnimplementedCedanaServer
	m *jobs.Manager
	// cl is the daemon's cluster membership; nil outside cluster mode.
	cl *clusterNode
}

var _ pb.CedanaServer = (*service)(nil)

func (s *service) Run(ctx context.Context, r *pb.RunRequest) (*pb.Job, error) {
	why, elsewhere, err := s.placeRun(ctx, r) // placement.go
	if err != nil || elsewhere != nil {
		return elsewhere, toStatus(err)
	}
	if err := s.clusterName(ctx, r.GetName()); err != nil {
		return nil, err
	}
	j, err := s.m.Run(ctx, jobs.RunSpec{Name: r.GetName(), Cmd: r.GetCmd(), Dir: r.GetDir(), Env: r.GetEnv(),
		Policy: policyFromPB(r.GetPolicy()), PIDNamespace: r.GetPidNamespace()})
	s.recordJob(ctx, j, err)
	out := s.jobToPB(j)
	if out != nil {
		out.Placement = why
	}
	return out, toStatus(err)
}

// clusterName refuses a name another node's job has (cluster mode).
func (s *service) clusterName(ctx context.Context, name string) error {
	if s.cl == nil || name == "" {
		return nil
	}
	if node, taken := s.cl.nameTaken(ctx, name); taken {
		return status.Errorf(codes.AlreadyExists, "a job named %s already exists in the cluster (on node %s)", name, node)
	}
	return nil
}

// recordJob records a new job in the cluster (cluster mode).
func (s *service) recordJob(ctx context.Context, j *store.Job, err error) {
	if s.cl != nil && err == nil {
		s.cl.record(ctx, j)
		s.cl.beat(ctx) // the others count the job at once (placement)
	}
}

// jobToPB converts a job, naming this node in cluster mode.
func (s *service) jobToPB(j *store.Job) *pb.Job {
	out := jobToPB(j)
	if out != nil && s.cl != nil {
		out.Node = s.cl.node.Name()
	}
	return out
}

// remote runs a job operation on the job's node when it is another one
// (cluster mode); done is false when the job is this node's.
func (s *service) remote(ctx context.Context, ref, verb string, req, resp proto.Message) (bool, error) {
	if s.cl == nil {
		return false, nil
	}
	j, err := s.m.Get(ctx, ref)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err == nil && jobs.State(j.State) == jobs.Moved && verb != "remove":
		// Only the history of the job is here: its owner answers.
	default:
		return false, nil
	}
	return s.cl.forward(ctx, ref, verb, req, resp)
}

func (s *service) Manage(ctx context.Context, r *pb.ManageRequest) (*pb.Job, error) {
	if err := s.clusterName(ctx, r.GetName()); err != nil {
		return nil, err
	}
	j, err := s.m.Manage(ctx, int(r.GetPid()), r.GetName(), policyFromPB(r.GetPolicy()))
	s.recordJob(ctx, j, err)
	return s.jobToPB(j), toStatus(err)
}

func (s *service) ManageContainer(ctx context.Context, r *pb.ManageContainerRequest) (*pb.Job, error) {
	if err := s.clusterName(ctx, r.GetName()); err != nil {
		return nil, err
	}
	j, err := s.m.ManageContainer(ctx, r.GetRuntime(), r.GetContainer(), r.GetName(), policyFromPB(r.GetPolicy()))
	s.recordJob(ctx, j, err)
	return s.jobToPB(j), toStatus(err)
}

// ListJobs lists this daemon's jobs or, in cluster mode (unless Local),
// every node's, each with its node.
func (s *service) ListJobs(ctx context.Context, r *pb.ListJobsRequest) (*pb.ListJobsResponse, error) {
	if s.cl != nil && !r.GetLocal() {
		out, err := s.cl.listJobs(ctx, r.GetNode())
		return out, toStatus(err)
	}
	if r.GetNode() != "" && (s.cl == nil || r.GetNode() != s.cl.node.Name()) {
		if s.cl == nil {
			return nil, status.Error(codes.FailedPrecondition, "--node needs a daemon in cluster mode (cedana daemon start --node NAME)")
		}
		return &pb.ListJobsResponse{}, nil
	}
	js, err := s.m.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.ListJobsResponse{Jobs: make([]*pb.Job, 0, len(js))}
	for _, j := range js {
		out.Jobs = append(out.Jobs, s.jobToPB(j))
	}
	return out, nil
}

func (s *service) GetJob(ctx context.Context, r *pb.GetJobRequest) (*pb.Job, error) {
	var out pb.Job
	if done, err := s.remote(ctx, r.GetJob(), "get", r, &out); done {
		return &out, err
	}
	j, err := s.m.Get(ctx, r.GetJob())
	return s.jobToPB(j), toStatus(err)
}

func (s *service) DumpJob(ctx context.Context, r *pb.DumpJobRequest) (*pb.Checkpoint, error) {
	var out pb.Checkpoint
	if done, err := s.remote(ctx, r.GetJob(), "dump", r, &out); done {
		return &out, err
	}
	c, err := s.m.Dump(ctx, r.GetJob(), r.GetLeaveRunning())
	return checkpointToPB(c), toStatus(err)
}

func (s *service) RestoreJob(ctx context.Context, r *pb.RestoreJobRequest) (*pb.Job, error) {
	var out pb.Job
	if done, err := s.remote(ctx, r.GetJob(), "restore", r, &out); done {
		return &out, err
	}
	j, err := s.m.Restore(ctx, r.GetJob(), r.GetCheckpointId())
	return s.jobToPB(j), toStatus(err)
}

func (s *service) KillJob(ctx context.Context, r *pb.KillJobRequest) (*pb.Job, error) {
	var out pb.Job
	if done, err := s.remote(ctx, r.GetJob(), "kill", r, &out); done {
		return &out, err
	}
	j, err := s.m.Kill(ctx, r.GetJob())
	return s.jobToPB(j), toStatus(err)
}

func (s *service) RemoveJob(ctx context.Context, r *pb.RemoveJobRequest) (*pb.RemoveJobResponse, error) {
	var rout pb.RemoveJobResponse
	if done, err := s.remote(ctx, r.GetJob(), "remove", r, &rout); done {
		return &rout, err
	}
	res, err := s.m.Remove(ctx, r.GetJob(), r.GetForce(), r.GetCheckpoints())
	if res == nil {
		return nil, toStatus(err)
	}
	if s.cl != nil {
		s.cl.forget(ctx, res.Job.ID)
	}
	return &pb.RemoveJobResponse{Job: s.jobToPB(res.Job), RemovedArchives: res.Removed, KeptArchives: res.Kept}, toStatus(err)
}

// ListNodes lists the cluster's nodes.
func (s *service) ListNodes(ctx context.Context, _ *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	if s.cl == nil {
		return nil, status.Error(codes.FailedPrecondition, "the daemon does not run in cluster mode: start it with --node NAME (and --nats URL to join a NATS cluster)")
	}
	out, err := s.cl.listNodes(ctx)
	return out, toStatus(err)
}

// Migrate moves a job to another node (stop-and-copy).
func (s *service) Migrate(ctx context.Context, r *pb.MigrateRequest) (*pb.MigrateResponse, error) {
	if s.cl == nil {
		return nil, status.Error(codes.FailedPrecondition, "the daemon does not run in cluster mode: start it with --node NAME (and --nats URL to join a NATS cluster)")
	}
	out, err := s.cl.migrate(ctx, r)
	return out, toStatus(err)
}

func (s *service) UpdatePolicy(ctx context.Context, r *pb.UpdatePolicyRequest) (*pb.Job, error) {
	j, err := s.m.UpdatePolicy(ctx, r.GetJob(), policyFromPB(r.GetPolicy()))
	return jobToPB(j), toStatus(err)
}

func (s *service) ListCheckpoints(ctx context.Context, r *pb.ListCheckpointsRequest) (*pb.ListCheckpointsResponse, error) {
	cs, err := s.m.Checkpoints(ctx, r.GetJob())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.ListCheckpointsResponse{Checkpoints: make([]*pb.Checkpoint, 0, len(cs))}
	for _, c := range cs {
		out.Checkpoints = append(out.Checkpoints, checkpointToPB(c))
	}
	return out, nil
}

func (s *service) DeleteCheckpoint(ctx context.Context, r *pb.DeleteCheckpointRequest) (*pb.DeleteCheckpointResponse, error) {
	return &pb.DeleteCheckpointResponse{}, toStatus(s.m.DeleteCheckpoint(ctx, r.GetId()))
}

func (s *service) ListEvents(ctx context.Context, r *pb.ListEventsRequest) (*pb.ListEventsResponse, error) {
	es, err := s.m.Events(ctx, r.GetJob(), r.GetAfterSeq(), int(r.GetLimit()))
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.ListEventsResponse{Events: make([]*pb.Event, 0, len(es))}
	for _, e := range es {
		out.Events = append(out.Events, &pb.Event{JobId: e.JobID, Seq: e.Seq, UnixMs: e.Time.UnixMilli(), Type: e.Type, Message: e.Message})
	}
	return out, nil
}

// Logs streams a job's log file. The file keeps its path across
// restores (the restored process reopens it), so following it follows the
// job.
func (s *service) Logs(r *pb.LogsRequest, stream pb.Cedana_LogsServer) error {
	ctx := stream.Context()
	path, err := s.m.LogFile(ctx, r.GetJob())
	if err != nil {
		return toStatus(err)
	}
	f, err := os.Open(path)
	if err != nil {
		return toStatus(err)
	}
	defer f.Close()
	if t := r.GetTailBytes(); t > 0 {
		if st, err := f.Stat(); err == nil && st.Size() > t {
			_, _ = f.Seek(st.Size()-t, io.SeekStart)
		}
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if err := stream.Send(&pb.LogChunk{Data: append([]byte(nil), buf[:n]...)}); err != nil {
				return err
			}
			continue
		}
		if err != nil && err != io.EOF {
			return toStatus(err)
		}
		if !r.GetFollow() {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *service) Drain(ctx context.Context, _ *pb.DrainRequest) (*pb.DrainResponse, error) {
	cks, errs := s.m.Drain(ctx)
	out := &pb.DrainResponse{}
	for _, c := range cks {
		out.Checkpoints = append(out.Checkpoints, checkpointToPB(c))
	}
	for _, e := range errs {
		out.Errors = append(out.Errors, e.Error())
	}
	return out, nil
}

// toStatus converts an error to a gRPC status: the only place where that
// happens.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var ce *criu.Error
	code := codes.Internal
	switch {
	case errors.Is(err, storage.ErrCorrupt):
		code = codes.DataLoss
	case errors.Is(err, storage.ErrAccess), errors.Is(err, storage.ErrNoBucket), errors.Is(err, storage.ErrNoSpace),
		errors.Is(err, storage.ErrWrongKey), errors.Is(err, storage.ErrNoKey), errors.Is(err, storage.ErrEncrypted),
		errors.Is(err, storage.ErrUnreachable): // not Unavailable: the CLI reads that as "daemon down"
		code = codes.FailedPrecondition
	case errors.Is(err, errMigrationFailed):
		code = codes.Aborted
	case errors.Is(err, cluster.ErrStaleEpoch):
		code = codes.FailedPrecondition
	case errors.Is(err, store.ErrNotFound), errors.Is(err, jobs.ErrNoLog), errors.Is(err, os.ErrNotExist), errors.Is(err, template.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, store.ErrExists), errors.Is(err, template.ErrExists):
		code = codes.AlreadyExists
	case errors.Is(err, jobs.ErrIllegalTransition), errors.Is(err, jobs.ErrNoCheckpoint), errors.As(err, &ce), errors.Is(err, template.ErrUnsafe),
		errors.Is(err, template.ErrBusy):
		code = codes.FailedPrecondition
	case errors.Is(err, store.ErrInvalid), errors.Is(err, checkpoint.ErrInvalidInput), errors.Is(err, proc.ErrNoProcess), errors.Is(err, template.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, checkpoint.ErrPIDBusy):
		code = codes.Unavailable
	case errors.Is(err, archive.ErrCorrupt), errors.Is(err, archive.ErrUnsafeEntry), errors.Is(err, archive.ErrNotArchive),
		errors.Is(err, archive.ErrUnsupportedVersion), errors.Is(err, archive.ErrTooLarge):
		code = codes.DataLoss
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}

func policyFromPB(p *pb.Policy) store.Policy {
	if p == nil {
		return store.Policy{}
	}
	return store.Policy{
		CheckpointEvery: time.Duration(p.GetCheckpointEveryMs()) * time.Millisecond,
		Keep:            int(p.GetKeep()), KeepBytes: p.GetKeepBytes(),
		RestoreOnFailure: p.GetRestoreOnFailure(), MaxRestores: int(p.GetMaxRestores()),
		SkipUnchanged: p.GetSkipUnchanged(),
	}
}

func policyToPB(p store.Policy) *pb.Policy {
	return &pb.Policy{CheckpointEveryMs: p.CheckpointEvery.Milliseconds(), Keep: int32(p.Keep), KeepBytes: p.KeepBytes,
		RestoreOnFailure: p.RestoreOnFailure, MaxRestores: int32(p.MaxRestores), SkipUnchanged: p.SkipUnchanged}
}

func jobToPB(j *store.Job) *pb.Job {
	if j == nil {
		return nil
	}
	out := &pb.Job{Id: j.ID, Name: j.Name, State: j.State, Pid: int32(j.PID), Cmd: j.Cmd, LogPath: j.LogPath,
		Adopted: j.Adopted, Policy: policyToPB(j.Policy), Restores: int32(j.Restores), Error: j.Error,
		LastCheckpointId: j.LastCheckpointID, CreatedUnixMs: j.CreatedAt.UnixMilli(),
		Runtime: j.Runtime, Container: j.Container, Template: j.Template, Address: j.Address}
	if !j.LastCheckpointAt.IsZero() {
		out.LastCheckpointUnixMs = j.LastCheckpointAt.UnixMilli()
	}
	if j.ExitCode != nil {
		out.HasExitCode, out.ExitCode = true, int32(*j.ExitCode)
	}
	if jobs.State(j.State) == jobs.Running {
		if u, ok := proc.Usage(j.PID, j.StartTime); ok {
			out.RssBytes, out.CpuPercent, out.StartedUnixMs = u.RSS, u.CPUPercent, u.Started.UnixMilli()
		}
	}
	return out
}

func checkpointToPB(c *store.Checkpoint) *pb.Checkpoint {
	if c == nil {
		return nil
	}
	return &pb.Checkpoint{Id: c.ID, JobId: c.JobID, Path: c.Path, State: c.State, Size: c.Size,
		CreatedUnixMs: c.CreatedAt.UnixMilli(), DumpSeconds: c.DumpSeconds, Error: c.Error}
}

func (s *service) CreateTemplate(ctx context.Context, r *pb.CreateTemplateRequest) (*pb.Template, error) {
	t, err := s.m.CreateTemplate(ctx, r.GetName(), jobs.TemplateSource{Job: r.GetJob(), PID: int(r.GetPid()), File: r.GetFrom()})
	return templateToPB(t), toStatus(err)
}

func (s *service) ListTemplates(ctx context.Context, _ *pb.ListTemplatesRequest) (*pb.ListTemplatesResponse, error) {
	ts, err := s.m.Templates(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.ListTemplatesResponse{Templates: make([]*pb.Template, 0, len(ts))}
	for _, t := range ts {
		out.Templates = append(out.Templates, templateToPB(t))
	}
	return out, nil
}

func (s *service) RemoveTemplate(ctx context.Context, r *pb.RemoveTemplateRequest) (*pb.RemoveTemplateResponse, error) {
	return &pb.RemoveTemplateResponse{}, toStatus(s.m.RemoveTemplate(ctx, r.GetName()))
}

func (s *service) RunFromTemplate(ctx context.Context, r *pb.RunFromTemplateRequest) (*pb.RunFromTemplateResponse, error) {
	rep, err := s.m.RunFromTemplate(ctx, jobs.CloneSpec{Template: r.GetTemplate(), Count: int(r.GetCount()), Prefix: r.GetPrefix(),
		Ready: r.GetReady(), ReadyTimeout: time.Duration(r.GetReadyTimeoutMs()) * time.Millisecond, Lazy: r.GetLazy(),
		Policy: policyFromPB(r.GetPolicy()), Publish: r.GetPublish()})
	if rep == nil {
		return nil, toStatus(err)
	}
	out := &pb.RunFromTemplateResponse{CacheHit: rep.CacheHit, PrepareUs: rep.Prepare.Microseconds()}
	for _, c := range rep.Clones {
		pc := &pb.Clone{Job: jobToPB(c.Job), RestoreUs: c.Restore.Microseconds(), ReadyUs: c.Ready.Microseconds(),
			RssAtReadyBytes: c.RSSAtReady, Published: c.Published}
		if c.Err != nil {
			pc.Error = c.Err.Error()
		}
		out.Clones = append(out.Clones, pc)
	}
	// Some clones may have failed: the reply lists every clone with its
	// error, so that the caller can tell which.
	_ = err
	return out, nil
}

func templateToPB(t *template.Template) *pb.Template {
	if t == nil {
		return nil
	}
	out := &pb.Template{Name: t.Name, CreatedUnixMs: t.Created.UnixMilli(), Source: t.Source, Kind: t.Kind, Size: t.Size,
		RssBytes: t.RSS, Processes: int32(t.Processes), Location: t.Location, Node: t.Node}
	for _, p := range t.Listen {
		out.Listen = append(out.Listen, int32(p))
	}
	return out
}
