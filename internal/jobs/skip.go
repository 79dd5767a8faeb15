package jobs

import (
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/proc"
	"github.com/cedana/cedana/internal/store"
)

// Skipping periodic checkpoints of jobs that did not change.
//
// A periodic checkpoint of a job whose processes have not run since its
// last complete checkpoint would write the same state again. Before each
// periodic checkpoint the manager compares the job's tree with what it was
// right after CRIU finished that checkpoint (the baseline, kept in memory
// only: a restarted daemon checkpoints once before it skips again):
//
//   - the same tasks (PID and start time) with the same threads;
//   - no CPU time used by any thread (schedstat, in nanoseconds, so that
//     even a wakeup of a few microseconds counts) nor by any process of
//     the job's cgroup (cpu.stat usage_usec, which also sees processes that
//     left the tree or exited);
//   - the same pending signals, open files (descriptor, target, flags,
//     offset; size and modification time of regular files open for
//     writing) and memory mappings (/proc/PID/maps).
//
// When all hold, the run is recorded as unchanged and the latest
// checkpoint stays the restore point. Some state can change while a job
// does not run at all: data or connections arriving in socket queues,
// data written to (or read from) the other end of a pipe held outside the
// job, input on a terminal, shared memory or mapped files written by other
// processes, files the job has open for writing written by others, events
// counted by eventfd, timerfd, inotify or signalfd descriptors. Under the
// default policy "safe" a job that holds any of these is never skipped;
// "always" skips anyway (the user knows nothing else writes there),
// "never" turns skipping off. See docs/periodic.md.

// Skip policies (store.Policy.SkipUnchanged); "" is SkipSafe.
const (
	SkipSafe   = "safe"
	SkipAlways = "always"
	SkipNever  = "never"
)

// ValidSkipPolicy checks a skip_unchanged value.
func ValidSkipPolicy(s string) error {
	switch s {
	case "", SkipSafe, SkipAlways, SkipNever:
		return nil
	}
	return fmt.Errorf("%w: skip_unchanged must be safe, always or never, not %q", store.ErrInvalid, s)
}

// treeState is what a job's tree looked like at one moment, reduced to
// what tells whether it changed.
type treeState struct {
	tasks    string // "pid:start:tid,tid…;" in tree order
	cpuNS    uint64 // CPU time of every thread, summed
	cgroupUS uint64 // cgroup CPU time (usage_usec); 0 without a cgroup
	signals  uint64 // hash of the pending signals of every thread
	files    uint64 // hash of the open descriptors and written files
	maps     uint64 // hash of the mappings
	// unsafe says why state could change without the job running (see
	// above), one reason per kind; empty when nothing could.
	unsafe []string
}

// diff names the first difference between an earlier state and now, or
// returns "" when nothing changed.
func (a *treeState) diff(b *treeState) string {
	switch {
	case a.tasks != b.tasks:
		return "its processes or threads changed"
	case a.cpuNS != b.cpuNS || a.cgroupUS != b.cgroupUS:
		return "it used CPU time"
	case a.signals != b.signals:
		return "a signal is pending"
	case a.files != b.files:
		return "its open files changed"
	case a.maps != b.maps:
		return "its memory mappings changed"
	}
	return ""
}

// harmlessDevices can be open without anything arriving through them.
var harmlessDevices = map[string]bool{"/dev/null": true, "/dev/zero": true, "/dev/full": true,
	"/dev/random": true, "/dev/urandom": true}

// readTreeState reads the state of the tree rooted at pid. cgroupDir is
// the job's cgroup directory ("" without one); ownLog is the job's log
// file, which only the job writes.
func readTreeState(pid int, cgroupDir, ownLog string) (*treeState, error) {
	pids, err := proc.Tree(pid)
	if err != nil {
		return nil, err
	}
	s := &treeState{}
	var tasks strings.Builder
	sig, files, mapsHash := fnv.New64a(), fnv.New64a(), fnv.New64a()
	unsafe := map[string]string{} // kind → first reason
	addUnsafe := func(kind, format string, a ...any) {
		if _, ok := unsafe[kind]; !ok {
			unsafe[kind] = fmt.Sprintf(format, a...)
		}
	}
	type pipeEnds struct{ read, write bool }
	pipes := map[uint64]*pipeEnds{}
	pipeOwner := map[uint64]string{}
	for _, p := range pids {
		st, err := proc.ReadStat(p)
		if err != nil {
			return nil, err
		}
		threads, err := proc.Threads(p)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&tasks, "%d:%d:", p, st.StartTime)
		for _, t := range threads {
			fmt.Fprintf(&tasks, "%d,", t.TID)
			s.cpuNS += t.RunNS
			fmt.Fprintf(sig, "%d:%x:%x;", t.TID, t.SigPnd, t.ShdPnd)
		}
		tasks.WriteByte(';')

		fds, err := proc.FDs(p)
		if err != nil {
			return nil, err
		}
		for _, fd := range fds {
			fmt.Fprintf(files, "%d:%d:%s:%o:%d;", p, fd.Num, fd.Path, fd.Flags, fd.Pos)
			link := filepath.Join(proc.Root, strconv.Itoa(p), "fd", strconv.Itoa(fd.Num))
			switch fd.Type {
			case "socket":
				addUnsafe("socket", "PID %d holds a socket (fd %d): data or connections can arrive without the job running", p, fd.Num)
			case "tty":
				addUnsafe("tty", "PID %d has a terminal open (fd %d, %s): input can arrive without the job running", p, fd.Num, fd.Path)
			case "anon":
				if fd.Path != "anon_inode:[eventpoll]" {
					addUnsafe("anon", "PID %d holds %s (fd %d), whose counters or queue change without the job running", p, fd.Path, fd.Num)
				}
			case "device":
				if !harmlessDevices[fd.Path] {
					addUnsafe("device", "PID %d has device %s open (fd %d)", p, fd.Path, fd.Num)
				}
			case "pipe":
				e := pipes[fd.Inode]
				if e == nil {
					e = &pipeEnds{}
					pipes[fd.Inode] = e
					pipeOwner[fd.Inode] = fmt.Sprintf("PID %d fd %d", p, fd.Num)
				}
				acc := fd.Flags & syscall.O_ACCMODE
				e.read = e.read || acc == syscall.O_RDONLY || acc == syscall.O_RDWR
				e.write = e.write || acc == syscall.O_WRONLY || acc == syscall.O_RDWR
			case "file", "deleted":
				var fst syscall.Stat_t
				if err := syscall.Stat(link, &fst); err != nil {
					continue // closed meanwhile: the descriptor list differs next time
				}
				if fst.Mode&syscall.S_IFMT == syscall.S_IFIFO {
					addUnsafe("fifo", "PID %d has the FIFO %s open (fd %d): others can write or read it", p, fd.Path, fd.Num)
				}
				if fd.Writable() && fst.Mode&syscall.S_IFMT == syscall.S_IFREG {
					fmt.Fprintf(files, "%d:%d:%d:%d.%d;", fst.Dev, fst.Ino, fst.Size, fst.Mtim.Sec, fst.Mtim.Nsec)
					if fd.Path != ownLog {
						addUnsafe("written-file", "PID %d has %s open for writing (fd %d): others may write it too", p, fd.Path, fd.Num)
					}
				}
			}
		}
		raw, lines, err := proc.Maps(p)
		if err != nil {
			return nil, err
		}
		_, _ = mapsHash.Write(raw)
		for _, l := range lines {
			if l.Shared() {
				addUnsafe("shared-memory", "PID %d maps %q shared and writable: other processes can change it", p, l.Path)
			}
		}
	}
	for ino, e := range pipes {
		if !e.read || !e.write {
			addUnsafe("pipe", "%s is one end of a pipe whose other end is outside the job (pipe:[%d])", pipeOwner[ino], ino)
		}
	}
	if cgroupDir != "" {
		if us, err := proc.CgroupCPU(cgroupDir); err == nil {
			s.cgroupUS = us
		}
	}
	s.tasks, s.signals, s.files, s.maps = tasks.String(), sig.Sum64(), files.Sum64(), mapsHash.Sum64()
	for _, k := range slices.Sorted(maps.Keys(unsafe)) {
		s.unsafe = append(s.unsafe, unsafe[k])
	}
	return s, nil
}

// skipper keeps, per job, the baseline of its latest periodic checkpoint
// and the current run of unchanged ticks. In memory only.
type skipper struct {
	mu   sync.Mutex
	jobs map[string]*skipRecord
}

type skipRecord struct {
	base   *treeState
	ckID   string // the checkpoint the baseline belongs to
	streak int    // unchanged runs since that checkpoint
	unsafe string // the reason last reported for not skipping
}

func (s *skipper) get(id string) *skipRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.jobs[id]; r != nil {
		c := *r
		return &c
	}
	return nil
}

func (s *skipper) update(id string, fn func(r *skipRecord)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jobs == nil {
		s.jobs = map[string]*skipRecord{}
	}
	r := s.jobs[id]
	if r == nil {
		r = &skipRecord{}
		s.jobs[id] = r
	}
	fn(r)
}

func (s *skipper) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.jobs, id)
}

// cgroupDir is a job's cgroup directory, or "" without one.
func (m *Manager) cgroupDir(j *store.Job) string {
	if j.Cgroup == "" || !m.cg.available() {
		return ""
	}
	return m.cg.dir(j.Cgroup)
}

// skipPolicy is the job's effective skip policy: containers are never
// skipped (their runtime holds state cedana does not inspect).
func skipPolicy(j *store.Job) string {
	if j.Runtime != "" {
		return SkipNever
	}
	if j.Policy.SkipUnchanged == "" {
		return SkipSafe
	}
	return j.Policy.SkipUnchanged
}

// observeAfterCRIU returns a function for checkpoint.DumpRequest.AfterCRIU
// that reads the baseline of a periodic checkpoint as soon as CRIU has
// let the tree go, and where the baseline goes (nil when it could not be
// read or the job is never skipped).
func (m *Manager) observeAfterCRIU(j *store.Job, leaveRunning bool) (func(), **treeState) {
	out := new(*treeState)
	if !leaveRunning || skipPolicy(j) == SkipNever {
		return nil, out
	}
	cg, log := m.cgroupDir(j), j.LogPath
	return func() {
		settle(j.PID)
		if st, err := readTreeState(j.PID, cg, log); err == nil {
			*out = st
		}
	}, out
}

// settleWait bounds how long settle waits.
const settleWait = 200 * time.Millisecond

// settle waits, briefly, until no thread of the tree rooted at pid is
// runnable. When CRIU lets a tree go, its threads still have to be
// scheduled to leave the stop and go back into the calls they slept in —
// on a busy machine that takes milliseconds — and that CPU time would
// otherwise make the next periodic run see a change that is only the
// checkpoint's own. A thread that keeps running keeps it waiting until
// settleWait; the baseline read then differs next time, and the job is
// checkpointed (never the other way round).
func settle(pid int) {
	deadline := time.Now().Add(settleWait)
	for {
		pids, err := proc.Tree(pid)
		if err != nil {
			return
		}
		quiet := true
		for _, p := range pids {
			ts, err := proc.Threads(p)
			if err != nil {
				return
			}
			for _, t := range ts {
				if t.State == 'R' || t.State == 't' || t.State == 'T' {
					quiet = false
				}
			}
		}
		if quiet || time.Now().After(deadline) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// checkpointed records the baseline of a complete checkpoint that left
// the job running (nil: no baseline, the next tick checkpoints).
func (m *Manager) checkpointed(jobID, ckID string, base *treeState) {
	if base == nil {
		m.skips.forget(jobID)
		return
	}
	m.skips.update(jobID, func(r *skipRecord) { r.base, r.ckID, r.streak = base, ckID, 0 })
}

// unchanged reports whether a periodic checkpoint of j may be skipped,
// recording the run (event, metric) when it is. A job that changed, or
// whose state could have changed unseen under the safe policy, is not.
func (m *Manager) unchanged(ctx context.Context, j *store.Job) bool {
	policy := skipPolicy(j)
	if policy == SkipNever {
		return false
	}
	rec := m.skips.get(j.ID)
	if rec == nil || rec.base == nil || rec.ckID != j.LastCheckpointID {
		return false // no baseline, or its checkpoint is no longer the latest
	}
	cur, err := readTreeState(j.PID, m.cgroupDir(j), j.LogPath)
	if err != nil {
		return false
	}
	if why := rec.base.diff(cur); why != "" {
		if rec.streak > 0 {
			m.event(j.ID, "changed", "changed after %d unchanged periodic run(s) (%s): checkpointing again", rec.streak, why)
		}
		m.metrics.periodicRun("changed")
		return false
	}
	if policy == SkipSafe && len(cur.unsafe) > 0 {
		why := cur.unsafe[0]
		if rec.unsafe != why {
			m.event(j.ID, "skip-unsafe", "not skipping unchanged periodic checkpoints (skip_unchanged=safe): %s; "+
				"set skip_unchanged=always if nothing outside the job changes that state", strings.Join(cur.unsafe, "; "))
			m.skips.update(j.ID, func(r *skipRecord) { r.unsafe = why })
		}
		m.metrics.periodicRun("unsafe")
		return false
	}
	var streak int
	m.skips.update(j.ID, func(r *skipRecord) { r.streak++; streak = r.streak })
	m.metrics.periodicRun("unchanged")
	if streak == 1 {
		m.event(j.ID, "unchanged", "periodic checkpoint skipped: nothing changed since checkpoint %s "+
			"(no CPU time used, same tasks, files and mappings); it stays the restore point. "+
			"Further unchanged runs are counted in cedana_periodic_runs_total{outcome=\"unchanged\"}", j.LastCheckpointID)
	}
	return true
}
