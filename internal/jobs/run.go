package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/store"
)

// RunSpec describes a job to start.
type RunSpec struct {
	// Name is the job's name; empty: derived from the command and ID.
	Name string
	// Cmd is the program and its arguments.
	Cmd []string
	// Dir is the working directory; empty: /.
	Dir string
	// Env is the environment; nil: the daemon's.
	Env []string
	// Policy is what the daemon does for the job on its own.
	Policy store.Policy
	// PIDNamespace runs the job in its own PID namespace.
	PIDNamespace bool
}

// Run starts a job: detached, in its own session, stdin on /dev/null,
// stdout and stderr appended to the job's log file.
func (m *Manager) Run(ctx context.Context, spec RunSpec) (*store.Job, error) {
	if len(spec.Cmd) == 0 || spec.Cmd[0] == "" {
		return nil, fmt.Errorf("%w: no command to run", store.ErrInvalid)
	}
	if err := ValidSkipPolicy(spec.Policy.SkipUnchanged); err != nil {
		return nil, err
	}
	path, err := resolveCommand(spec.Cmd[0], spec.Dir, spec.Env)
	if err != nil {
		return nil, err
	}
	id := store.NewID("job-")
	name := spec.Name
	if name == "" {
		name = fmt.Sprintf("%s-%s", filepath.Base(spec.Cmd[0]), id[len(id)-6:])
	}
	if err := validName(name); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(m.cfg.LogDir, 0o700); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	logPath := filepath.Join(m.cfg.LogDir, id+".log")
	j := &store.Job{ID: id, Name: name, State: string(Running), Cmd: spec.Cmd, Dir: spec.Dir,
		LogPath: logPath, Policy: m.withDefaults(spec.Policy)}
	if j.Dir == "" {
		j.Dir = "/"
	}
	var cgroup *os.File
	if m.cg.available() {
		j.Cgroup = m.cg.name(id)
		if cgroup, err = m.cg.create(j.Cgroup); err != nil {
			m.log.Warn("the job runs without a cgroup of its own", "job", id, "err", err)
			j.Cgroup = ""
		} else {
			defer cgroup.Close()
		}
	}
	// Create the record first: a name clash must not leave a process
	// behind, and a daemon that dies before the PID is recorded finds the
	// process in the recorded cgroup (see reconcile).
	j.State = string(Starting) // no operation may begin until the process exists
	if err := m.store.CreateJob(ctx, j); err != nil {
		if cgroup != nil {
			_ = m.cg.remove(j.Cgroup)
		}
		return nil, err
	}
	pid, err := spawn(path, spec, j.Dir, logPath, cgroup)
	if err != nil {
		_ = m.store.DeleteJob(ctx, j.ID)
		_ = m.cg.remove(j.Cgroup)
		return nil, err
	}
	if cgroup != nil {
		// Started inside the cgroup (CLONE_INTO_CGROUP) or, on kernels
		// without it, moved there before the caller hears of it. The
		// process runs either way: a failure here is not the job's.
		if err := m.cg.enter(j.Cgroup, pid); err != nil {
			m.log.Warn("the job runs outside its cgroup", "job", j.ID, "err", err)
		}
	}
	st, err := identity(pid)
	if err != nil {
		st = 0 // exited at once; the supervisor records how
	}
	j, err = m.store.UpdateJob(ctx, j.ID, func(j *store.Job) error {
		j.State, j.PID, j.StartTime = string(Running), pid, st
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.event(j.ID, "started", "started %s as PID %d (%s)", strings.Join(spec.Cmd, " "), pid, describePolicy(j.Policy))
	m.supervise(j, true)
	return j, nil
}

// spawn starts the process, inside cgroup when it is set, and returns its
// PID. The daemon never calls Wait on it: the supervisor reaps it through a
// pidfd.
func spawn(path string, spec RunSpec, dir, logPath string, cgroup *os.File) (int, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("open job log: %w", err)
	}
	defer logf.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer null.Close()
	env := spec.Env
	if env == nil {
		env = os.Environ()
	}
	env = JobEnv(env)
	sys := &syscall.SysProcAttr{Setsid: true}
	if spec.PIDNamespace {
		sys.Cloneflags = syscall.CLONE_NEWPID
	}
	attr := &os.ProcAttr{Dir: dir, Env: env, Files: []*os.File{null, logf, logf}, Sys: sys}
	if cgroup != nil {
		sys.UseCgroupFD, sys.CgroupFD = true, int(cgroup.Fd())
	}
	p, err := os.StartProcess(path, spec.Cmd, attr)
	if err != nil && cgroup != nil {
		// clone3 with CLONE_INTO_CGROUP needs Linux 5.7: start it outside,
		// the caller moves it in.
		sys.UseCgroupFD, sys.CgroupFD = false, 0
		p, err = os.StartProcess(path, spec.Cmd, attr)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: start %s: %v", store.ErrInvalid, spec.Cmd[0], err)
	}
	pid := p.Pid
	_ = p.Release()
	return pid, nil
}

// Manage adopts a running process tree as a job.
func (m *Manager) Manage(ctx context.Context, pid int, name string, policy store.Policy) (*store.Job, error) {
	if err := ValidSkipPolicy(policy.SkipUnchanged); err != nil {
		return nil, err
	}
	st, err := identity(pid)
	if err != nil {
		return nil, fmt.Errorf("%w: no running process with PID %d", store.ErrInvalid, pid)
	}
	if pid == os.Getpid() {
		return nil, fmt.Errorf("%w: PID %d is the daemon itself", store.ErrInvalid, pid)
	}
	jobs, err := m.store.ListJobs(ctx)
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		if State(j.State).alive() && j.PID == pid && j.StartTime == st {
			return nil, fmt.Errorf("%w: PID %d is already managed as job %s", store.ErrExists, pid, j.Name)
		}
	}
	cmd := proc.Cmdline(pid)
	if name == "" {
		comm := "process"
		if s, err := proc.ReadStat(pid); err == nil {
			comm = s.Comm
		}
		name = fmt.Sprintf("%s-%d", comm, pid)
	}
	if err := validName(name); err != nil {
		return nil, err
	}
	j := &store.Job{Name: name, State: string(Running), PID: pid, StartTime: st, Cmd: cmd,
		Dir: proc.Link(pid, "cwd"), Adopted: true, Policy: m.withDefaults(policy)}
	if err := m.store.CreateJob(ctx, j); err != nil {
		return nil, err
	}
	m.event(j.ID, "adopted", "adopted PID %d (%s)", pid, describePolicy(j.Policy))
	m.supervise(j, false)
	return j, nil
}

// Kill ends a job's process tree. The job and its checkpoints remain.
func (m *Manager) Kill(ctx context.Context, ref string) (*store.Job, error) {
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	// A user's kill wins over a checkpoint in progress: wait for it.
	for deadline := time.Now().Add(killWait); State(j.State) == Dumping && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if j, err = m.store.GetJob(ctx, j.ID); err != nil {
			return nil, err
		}
	}
	was := State(j.State)
	// Killed also cancels an automatic restore waiting for its backoff.
	j, err = m.transition(ctx, j.ID, "kill", Killed, func(j *store.Job) { j.RestorePending = false })
	if err != nil {
		return nil, err
	}
	m.unsupervise(j.ID)
	if was.alive() && sameProcess(j.PID, j.StartTime) {
		killTree(j.PID)
	}
	m.killCgroup(j)
	m.cloneEnded(j)
	m.event(j.ID, "killed", "killed by request (PID %d)", j.PID)
	return j, nil
}

// killCgroup ends every process left in a job's cgroup, if it has one.
func (m *Manager) killCgroup(j *store.Job) {
	if j.Cgroup == "" || !m.cg.available() {
		return
	}
	if n, err := m.cg.kill(j.Cgroup, 5*time.Second); err != nil {
		m.log.Warn("end the job's processes through its cgroup", "job", j.ID, "err", err)
	} else if n > 0 {
		m.log.Info("ended the processes in the job's cgroup", "job", j.ID, "count", n)
	}
}

// killTree sends SIGKILL to pid and its descendants, leaves first.
func killTree(pid int) {
	tree, err := proc.Tree(pid)
	if err != nil {
		return
	}
	for i := len(tree) - 1; i >= 0; i-- {
		_ = syscall.Kill(tree[i], syscall.SIGKILL)
	}
}

// withDefaults fills the policy fields a request left unset.
func (m *Manager) withDefaults(p store.Policy) store.Policy {
	d := m.cfg.DefaultPolicy
	if p.CheckpointEvery == 0 {
		p.CheckpointEvery = d.CheckpointEvery
	}
	if p.Keep == 0 {
		p.Keep = d.Keep
	}
	if p.KeepBytes == 0 {
		p.KeepBytes = d.KeepBytes
	}
	if !p.RestoreOnFailure {
		p.RestoreOnFailure = d.RestoreOnFailure
	}
	if p.MaxRestores == 0 {
		p.MaxRestores = d.MaxRestores
	}
	if p.MaxRestores == 0 {
		p.MaxRestores = m.cfg.MaxRestores
	}
	if p.SkipUnchanged == "" {
		p.SkipUnchanged = d.SkipUnchanged
	}
	return p
}

// validName accepts names usable on a command line and in file names.
func validName(name string) error {
	if len(name) > 128 {
		return fmt.Errorf("%w: job name longer than 128 characters", store.ErrInvalid)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%w: job name %q: use letters, digits, '-', '_' and '.'", store.ErrInvalid, name)
		}
	}
	if strings.HasPrefix(name, "job-") {
		return fmt.Errorf("%w: job name %q: names starting with job- are reserved for IDs", store.ErrInvalid, name)
	}
	return nil
}

var errStale = errors.New("stale process")

// killWait bounds how long a kill waits for a checkpoint in progress.
const killWait = 2 * time.Minute
