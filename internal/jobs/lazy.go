package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/cedana/cedana/internal/store"
)

// A lazily migrated job (docs/cluster.md, "Lazy migration") runs on this
// node before its memory has arrived: CRIU's lazy-pages daemon pulls each
// page from the source as the job touches it, and the rest in the
// background. Until every page is here:
//
//   - the job must not run on if the daemon fails: a page it never got
//     would read as zeros. Its tree is killed at once, and OnLazyFailed
//     tells the cluster code, which hands the job back to the source
//     (whose stopped copy still has all of it);
//   - it is not checkpointed (its memory is not all here to dump).
//
// The archive it arrived with holds no memory, so it is not kept as a
// checkpoint: the job's first checkpoint here is its next one.

// lazyLoad is a restore's lazy-pages daemon (checkpoint.RestoreResult.Lazy).
type lazyLoad interface {
	Done() <-chan struct{}
	Err() error
	Stop()
}

// lazyState is a lazily migrated job's memory transfer.
type lazyState struct {
	done chan struct{}
	err  error // set before done is closed
}

// SetOnLazyFailed registers what to do once a lazily migrated job was
// killed because its memory could not all arrive (the cluster hands it
// back). fn runs in its own goroutine.
func (m *Manager) SetOnLazyFailed(fn func(id string, err error)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.onLazyFailed = fn
}

// LazyWait waits until the memory of job id has all arrived, and returns
// nil, or why it did not (the job's copy was then killed). A job that is
// not loading lazily returns nil at once.
func (m *Manager) LazyWait(ctx context.Context, id string) error {
	m.mu.Lock()
	l := m.lazy[id]
	m.mu.Unlock()
	if l == nil {
		return nil
	}
	select {
	case <-l.done:
		return l.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lazyLoading reports whether job id's memory is still arriving.
func (m *Manager) lazyLoading(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.lazy[id]
	if l == nil {
		return false
	}
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// watchLazy follows the lazy-pages daemon of job j's restore.
func (m *Manager) watchLazy(j *store.Job, srv lazyLoad) {
	l := &lazyState{done: make(chan struct{})}
	m.mu.Lock()
	if m.lazy == nil {
		m.lazy = map[string]*lazyState{}
	}
	m.lazy[j.ID] = l
	m.mu.Unlock()
	start := time.Now()
	if h, ok := srv.(interface{ Held() int }); ok {
		m.log.Info("memory arriving lazily", "job", j.ID, "userfaultfds_held", h.Held())
	}
	go func() {
		<-srv.Done()
		err := srv.Err()
		if err != nil {
			err = fmt.Errorf("the job's memory stopped arriving from the source: %w", err)
			m.killLazy(j)
			srv.Stop() // lets go of the tree's userfaultfds (criu/lazyhold.go) once it is killed
			m.event(j.ID, "migrate-failed", "%v; its copy here was killed rather than run without it", err)
		} else {
			m.event(j.ID, "memory-arrived", "all of the job's memory arrived from the source in %v", time.Since(start).Round(time.Millisecond))
		}
		l.err = err
		close(l.done)
		m.mu.Lock()
		fn := m.onLazyFailed
		m.mu.Unlock()
		if err != nil && fn != nil {
			fn(j.ID, err)
		}
	}()
}

// killLazy kills a lazily restored tree whose memory will not all come.
func (m *Manager) killLazy(j *store.Job) {
	m.unsupervise(j.ID)
	if cur, err := m.store.GetJob(context.Background(), j.ID); err == nil {
		j = cur
	}
	if j.PID <= 0 || !sameProcess(j.PID, j.StartTime) {
		return
	}
	killTree(j.PID)
	m.setState(j.ID, Failed, "killed: its memory did not all arrive in a lazy migration")
}

// errLazyLoading refuses a checkpoint of a job whose memory is arriving.
func (m *Manager) errLazyLoading(j *store.Job) error {
	if !m.lazyLoading(j.ID) {
		return nil
	}
	return fmt.Errorf("%w: job %s's memory is still arriving from the node it migrated from; it can be checkpointed once all of it is here", ErrIllegalTransition, j.Name)
}
