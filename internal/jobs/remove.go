package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/store"
)

// RemoveResult says what Remove did with a job's archives.
type RemoveResult struct {
	// Job is the job as it was when removed.
	Job *store.Job
	// Removed lists the archives deleted (with checkpoints: true).
	Removed []string
	// Kept lists the archives left on disk, restorable with
	// `cedana restore PATH`.
	Kept []string
}

// Remove deletes a job from the catalogue, as `docker rm` does: its name
// becomes free and `ps` no longer lists it. A job with processes is
// refused unless force, which kills it first. Its archives stay on disk
// (and are listed in the result) unless checkpoints is set. The record
// goes first, then the files: a crash in between leaves unlisted files,
// never a listed job whose log or archives are gone.
func (m *Manager) Remove(ctx context.Context, ref string, force, checkpoints bool) (*RemoveResult, error) {
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	if s := State(j.State); s.alive() {
		if !force {
			return nil, fmt.Errorf("%w: cannot remove job %s: it is %s (kill it first, or use -f)", ErrIllegalTransition, j.Name, s)
		}
		if j, err = m.Kill(ctx, j.ID); err != nil {
			return nil, err
		}
	}
	if err := check("remove", State(j.State), j.Name); err != nil {
		return nil, err
	}
	cks, err := m.store.ListCheckpoints(ctx, j.ID)
	if err != nil {
		return nil, err
	}
	for _, c := range cks {
		if c.State == store.CheckpointPending {
			return nil, fmt.Errorf("%w: cannot remove job %s: checkpoint %s is being written", ErrIllegalTransition, j.Name, c.ID)
		}
	}
	// Nothing of the job may run on once it is forgotten: processes left
	// in its cgroup or session (a failed job's children) are ended.
	m.unsupervise(j.ID)
	if State(j.State).alive() && sameProcess(j.PID, j.StartTime) {
		return nil, fmt.Errorf("%w: cannot remove job %s: it is running", ErrIllegalTransition, j.Name)
	}
	m.endLeftovers(j)
	if err := m.store.DeleteJob(ctx, j.ID); err != nil {
		return nil, err
	}
	m.log.Info("removed job", "job", j.ID, "name", j.Name)
	res := &RemoveResult{Job: j}
	var errs []error
	for _, c := range cks {
		if c.Path == "" {
			continue
		}
		if !m.archiveExists(c.Path) {
			continue
		}
		if !checkpoints {
			res.Kept = append(res.Kept, c.Path)
			continue
		}
		if err := m.removeArchive(c.Path); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Removed = append(res.Removed, c.Path)
	}
	if checkpoints {
		if err := m.dropChunks(ctx, j.ID); err != nil {
			errs = append(errs, err)
		}
		_ = os.Remove(m.jobDir(j.ID)) // only if empty
	}
	if j.LogPath != "" && strings.HasPrefix(j.LogPath, m.cfg.LogDir+string(filepath.Separator)) {
		if err := os.Remove(j.LogPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := m.cg.remove(j.Cgroup); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("job %s was removed, but some of its files remain: %w", j.Name, errors.Join(errs...))
	}
	return res, nil
}

// LogFile returns the file holding a job's output. Jobs cedana started
// have a log of their own. An adopted job writes wherever its stdout
// pointed before it was adopted: that file when it is a regular file,
// otherwise there is no log to show (ErrNoLog, saying where it goes).
func (m *Manager) LogFile(ctx context.Context, ref string) (string, error) {
	j, err := m.store.GetJob(ctx, ref)
	if err != nil {
		return "", err
	}
	if j.LogPath != "" {
		return j.LogPath, nil
	}
	if !State(j.State).alive() || !sameProcess(j.PID, j.StartTime) {
		return "", fmt.Errorf("%w: job %s was adopted (cedana manage), not started by cedana, so cedana keeps no log of it, and its process is not running", ErrNoLog, j.Name)
	}
	target := proc.Link(j.PID, "fd/1")
	fd1 := filepath.Join(proc.Root, strconv.Itoa(j.PID), "fd", "1")
	if st, err := os.Stat(fd1); err == nil && st.Mode().IsRegular() {
		if t, err := os.Stat(target); err == nil && os.SameFile(st, t) {
			return target, nil
		}
		return fd1, nil // deleted, or in another mount namespace
	}
	if target == "" {
		target = "nowhere (closed)"
	}
	return "", fmt.Errorf("%w: job %s was adopted (cedana manage), not started by cedana, so cedana keeps no log of it; its output goes to %s, which is not a file", ErrNoLog, j.Name, target)
}
