package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cedana/cedana/internal/container"
	"github.com/cedana/cedana/internal/store"
	"github.com/cedana/cedana/internal/template"
)

// Container templates: a managed runc container's checkpoint (taken with
// the container left running) serves as a template, and every clone is
// a new runc container restored from it (`restore runc --id`: its own
// writable layer over the bundle's rootfs, its own cgroup) and a job of
// its own. Clones are restored through the container engine, which
// verifies and unpacks the archive per clone; a shared template's archive
// is fetched to the node's cache once (the container engine reads a local
// file) and reused.

// templateFromContainer makes template name of a managed runc container
// job, which keeps running.
func (m *Manager) templateFromContainer(ctx context.Context, name string, j *store.Job) (*template.Template, error) {
	if j.Runtime != "runc" {
		return nil, fmt.Errorf("%w: job %s is a %s container; only runc containers can be templates", template.ErrInvalid, j.Name, j.Runtime)
	}
	if m.containers == nil {
		return nil, fmt.Errorf("%w: this daemon has no container support", template.ErrInvalid)
	}
	ts := m.tpl()
	job, err := m.transition(ctx, j.ID, "dump", Dumping, func(j *store.Job) { j.DumpLeaveRunning = true })
	if err != nil {
		return nil, err
	}
	d, err := ts.store.Begin(ctx, name)
	if err != nil {
		m.setState(job.ID, Running, "")
		return nil, err
	}
	path := d.Path
	if d.Key != "" { // the container engine writes a local file: upload it after
		if err := os.MkdirAll(ts.store.Root(), 0o700); err != nil {
			m.setState(job.ID, Running, "")
			ts.store.Abort(d)
			return nil, err
		}
		path = filepath.Join(ts.store.Root(), ".upload-"+d.ID+".zip")
		defer os.Remove(path)
	}
	res, err := m.containers.Dump(ctx, container.DumpRequest{Runtime: job.Runtime, Container: job.Container, Path: path, LeaveRunning: true})
	m.setState(job.ID, Running, "")
	// The container was restored in place (or resumed): watch its init.
	if j2, rerr := m.refreshContainer(context.Background(), job); rerr == nil {
		m.supervise(j2, false)
	} else {
		m.died(job.ID, job.PID, job.StartTime, exitStatus{})
	}
	if err == nil && d.Key != "" {
		_, err = upload(ctx, ts.store.Backend(), d.Key, path)
	}
	if err != nil {
		ts.store.Abort(d)
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	t := &template.Template{Created: res.Manifest.Created, Source: "job " + job.Name, Kind: job.Runtime, Size: res.Size,
		Processes: len(res.Manifest.Processes), Digest: template.ContentDigest(res.Manifest)}
	if err := ts.store.Commit(ctx, d, t); err != nil {
		ts.store.Abort(d)
		return nil, err
	}
	m.event(job.ID, "template", "template %s made (%d bytes) in %s", name, res.Size, ts.store.Where())
	return t, nil
}

// runContainerClones starts spec.Count new runc containers from
// container template t, one after another, each a job.
func (m *Manager) runContainerClones(ctx context.Context, spec CloneSpec, t *template.Template, start time.Time) (*CloneReport, error) {
	if m.containers == nil {
		return nil, fmt.Errorf("%w: this daemon has no container support", template.ErrInvalid)
	}
	if spec.Ready != "" || len(spec.Publish) > 0 || spec.Lazy {
		return nil, fmt.Errorf("%w: template %s is a %s container: --ready, --publish and --lazy apply to process templates only", template.ErrInvalid, t.Name, t.Kind)
	}
	ts := m.tpl()
	path, hit, release, err := ts.cache.ArchiveFile(ctx, ts.store, t)
	if err != nil {
		return nil, err
	}
	defer release()
	prefix, err := spec.namePrefix(t)
	if err != nil {
		return nil, err
	}
	rep := &CloneReport{Clones: make([]Clone, spec.Count), CacheHit: hit, Prepare: time.Since(start)}
	next := 1
	var failed []string
	for i := range rep.Clones {
		c := &rep.Clones[i]
		var j *store.Job
		for ; ; next++ {
			j = &store.Job{ID: store.NewID("job-"), Name: fmt.Sprintf("%s-%d", prefix, next), State: string(Starting),
				Policy: m.withDefaults(spec.Policy), Template: t.Name, Runtime: t.Kind, Dir: "/"}
			err = m.store.CreateJob(ctx, j)
			if !errors.Is(err, store.ErrExists) {
				break
			}
		}
		next++
		if err != nil {
			c.Err = err
			failed = append(failed, err.Error())
			break
		}
		c.Job = j
		res, err := m.containers.Restore(ctx, container.RestoreRequest{Path: path, Runtime: t.Kind, Name: j.Name})
		c.Restore = time.Since(start)
		if err != nil {
			c.Err = fmt.Errorf("clone %s: %w", j.Name, err)
			c.Job, _ = m.store.Commit(context.Background(), j.ID, store.Change{
				Job:    func(j *store.Job) error { j.State, j.Error = string(Failed), err.Error(); return nil },
				Events: []store.Event{{Type: "clone-failed", Message: err.Error()}},
			})
			failed = append(failed, c.Err.Error())
			continue
		}
		m.log.Info("container clone started", "job", j.ID, "template", t.Name, "container", res.ID)
		if c.Job, err = m.restored(j, "template "+t.Name, res.PID, res.ID, "cloned", res.Total, false); err != nil {
			c.Err = err
			failed = append(failed, err.Error())
		}
	}
	if len(failed) > 0 {
		return rep, fmt.Errorf("%d of %d clones failed: %s", len(failed), spec.Count, strings.Join(failed, "; "))
	}
	return rep, nil
}
