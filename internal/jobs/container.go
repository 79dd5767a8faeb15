package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/container"
	"github.com/cedana/cedana/internal/store"
)

// Containers is what the manager needs of the container engine
// (internal/container.Service), so that container jobs run through the
// same engine as `cedana dump docker` and `cedana restore docker`.
type Containers interface {
	Lookup(ctx context.Context, runtime, id string) (*container.Running, error)
	Dump(ctx context.Context, req container.DumpRequest) (*container.DumpResult, error)
	Restore(ctx context.Context, req container.RestoreRequest) (*container.RestoreResult, error)
}

var _ Containers = (*container.Service)(nil)

// containerExits is implemented by container engines that can say how a
// container's init ended (only a parent learns that from the kernel, and
// the daemon is not the parent of a container's init).
type containerExits interface {
	ExitStatus(ctx context.Context, runtime, id string, wait time.Duration) (code int, known bool, err error)
}

var _ containerExits = (*container.Service)(nil)

// containerExit asks the runtime how a container job's init ended.
func (m *Manager) containerExit(id string) exitStatus {
	ce, ok := m.containers.(containerExits)
	if !ok {
		return exitStatus{}
	}
	j, err := m.store.GetJob(m.ctx, id)
	if err != nil || j.Runtime == "" {
		return exitStatus{}
	}
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
	defer cancel()
	code, known, err := ce.ExitStatus(ctx, j.Runtime, j.Container, 3*time.Second)
	if err != nil {
		m.log.Warn("exit status of a container job", "job", id, "err", err)
	}
	return exitStatus{known: known, code: code}
}

// ManageContainer adopts a running Docker or runc container as a job. Its
// checkpoints are container archives (config, writable layer, images);
// its restores recreate the container when it no longer exists.
func (m *Manager) ManageContainer(ctx context.Context, runtime, id, name string, policy store.Policy) (*store.Job, error) {
	if m.containers == nil {
		return nil, fmt.Errorf("%w: this daemon has no container support", store.ErrInvalid)
	}
	c, err := m.containers.Lookup(ctx, runtime, id)
	if err != nil {
		return nil, err
	}
	st, err := identity(c.PID)
	if err != nil {
		return nil, fmt.Errorf("%w: container %s has no running init process", store.ErrInvalid, id)
	}
	jobs, err := m.store.ListJobs(ctx)
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		if j.Runtime == runtime && j.Container == c.ID && State(j.State).alive() {
			return nil, fmt.Errorf("%w: container %s is already managed as job %s", store.ErrExists, c.Name, j.Name)
		}
	}
	if name == "" {
		name = SanitizeJobName(c.Name)
	}
	if err := validName(name); err != nil {
		return nil, err
	}
	j := &store.Job{Name: name, State: string(Running), PID: c.PID, StartTime: st, Adopted: true,
		Runtime: runtime, Container: c.ID, Policy: m.withDefaults(policy)}
	if err := m.store.CreateJob(ctx, j); err != nil {
		return nil, err
	}
	m.event(j.ID, "adopted", "adopted %s container %s (init PID %d; %s)", runtime, c.Name, c.PID, describePolicy(j.Policy))
	m.supervise(j, false)
	return j, nil
}

// dumpContainer checkpoints a container job. With leaveRunning the
// container is restored in place, so its init has a new PID afterwards.
func (m *Manager) dumpContainer(ctx context.Context, j *store.Job, path string, leaveRunning bool) (string, int64, *archive.DumpStats, error) {
	res, err := m.containers.Dump(ctx, container.DumpRequest{Runtime: j.Runtime, Container: j.Container,
		Path: path, LeaveRunning: leaveRunning})
	if err != nil {
		return "", 0, nil, err
	}
	return res.Path, res.Size, res.Manifest.Stats, nil
}

// refreshContainer records a container job's current init process after
// an operation that replaced it.
func (m *Manager) refreshContainer(ctx context.Context, j *store.Job) (*store.Job, error) {
	c, err := m.containers.Lookup(ctx, j.Runtime, j.Container)
	if err != nil {
		return nil, err
	}
	st, err := identity(c.PID)
	if err != nil {
		return nil, err
	}
	return m.store.UpdateJob(ctx, j.ID, func(j *store.Job) error {
		j.PID, j.StartTime, j.Container = c.PID, st, c.ID
		return nil
	})
}

// restoreContainer restores a container job from an archive. A migrated
// job's container is restored, left stopped, as the new container ID
// recorded in the job (as a template's clone is, under a new ID).
func (m *Manager) restoreContainer(ctx context.Context, j *store.Job, path string, migrated bool) (pid int, containerID string, err error) {
	req := container.RestoreRequest{Path: path, Runtime: j.Runtime}
	if migrated {
		req.Name, req.LeaveStopped, req.Migration = j.Container, true, true
		req.HookEnv = []string{"CEDANA_JOB_ID=" + j.ID, "CEDANA_JOB_NAME=" + j.Name}
	}
	res, err := m.containers.Restore(ctx, req)
	if err != nil {
		return 0, "", err
	}
	return res.PID, res.ID, nil
}

// SanitizeJobName turns a container name into a valid job name.
func SanitizeJobName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '-'
		}
	}
	out := string(b)
	if len(out) > 64 {
		out = out[:64]
	}
	if out == "" || len(out) >= 4 && out[:4] == "job-" {
		out = "c-" + out
	}
	return out
}

// containerRemover is implemented by container engines that can remove a
// container whatever its state (internal/container.Service).
type containerRemover interface {
	Remove(ctx context.Context, runtime, id string) error
}

var _ containerRemover = (*container.Service)(nil)

// canImportContainer refuses a container job this daemon cannot restore.
func (m *Manager) canImportContainer(spec ImportSpec) error {
	if m.containers == nil {
		return fmt.Errorf("%w: job %s is a %s container and this daemon has no container support", store.ErrInvalid, spec.Name, spec.Runtime)
	}
	if spec.Runtime != container.Runc {
		return fmt.Errorf("%w: job %s is a %s container; only runc containers migrate", store.ErrInvalid, spec.Name, spec.Runtime)
	}
	if spec.Container == "" {
		return fmt.Errorf("%w: container job %s arrives without the container ID to restore it as", store.ErrInvalid, spec.Name)
	}
	return nil
}

// removeContainer removes a container job's container through its
// runtime (a discarded migration's stopped copy).
func (m *Manager) removeContainer(ctx context.Context, j *store.Job) error {
	r, ok := m.containers.(containerRemover)
	if !ok || j.Container == "" {
		return nil
	}
	return r.Remove(ctx, j.Runtime, j.Container)
}
