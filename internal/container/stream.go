package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/fault"
	"github.com/cedana/cedana/internal/proc"
)

// Streaming a container's memory, as a process's: CRIU hands its images
// to cedana through the image streamer, the pages go straight into the
// archive (dump) or straight from it into CRIU (restore), never through
// the staging directory. The runtime must let cedana choose how CRIU
// runs: runc does (`--criu`, see criu.WriteBridge); Docker does not (its
// CRIU is whatever `criu` the engine's runc finds, for every container).

// memoryStreamer is a runtime that can stream a container's memory.
type memoryStreamer interface {
	driver
	// checkpointStopped makes the runtime dump t, its images streamed to
	// the streamer listening in streamDir, and leave the container's
	// processes stopped, whether it streamed or, when the bridge could
	// not translate the runtime's request, staged its images in
	// imagesDir. It returns why the images were staged ("" if they were
	// not).
	checkpointStopped(ctx context.Context, t *target, imagesDir, streamDir string, o criuOptions) (staged string, err error)
	// kill ends a container that checkpointStopped left stopped, once
	// its archive is durable.
	kill(ctx context.Context, t *target) error
}

// dumpStreamed is Dump for a runtime that streams: the archive is
// written while CRIU dumps, and the container stays stopped (not killed)
// until the archive is durable. Every failure resumes it (SIGCONT), no
// restore needed; with LeaveRunning the same resume follows success.
func (s *Service) dumpStreamed(ctx context.Context, sd memoryStreamer, j *dumpJob) (*DumpResult, error) {
	t, prog := j.t, j.prog
	if err := os.Mkdir(j.imagesDir, 0o700); err != nil {
		return nil, err
	}
	extra := containerEntries(j.staging, t)
	wopts := archive.WriteOptions{Progress: prog.Advance, Concurrency: runtime.NumCPU(), Extra: extra, Fault: s.fault,
		Transient: j.req.Transient}
	var w *archive.Writer
	var err error
	if j.req.Destination != nil {
		w, err = archive.NewWriterTo(j.path, j.req.Destination, wopts)
	} else {
		w, err = archive.NewWriter(j.path, wopts)
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint of %s container %s not started, it is still running: %w", sd.name(), j.req.Container, err)
	}
	col := checkpoint.NewImageCollector(w, j.imagesDir, s.fault)
	srv, err := criu.ServeDumpImages(j.imagesDir, col.Sink)
	if err != nil {
		w.Abort()
		return nil, fmt.Errorf("checkpoint of %s container %s not started, it is still running: %w", sd.name(), j.req.Container, err)
	}
	s.log.Info("checkpointing container", "runtime", sd.name(), "id", t.info.ID, "archive", j.path,
		"staging", j.staging, "stream", true)

	fail := func(err error) (*DumpResult, error) {
		prog.Done()
		w.Abort()
		if rerr := resumeStopped(t.pid); rerr != nil {
			s.log.Error("a failed container dump left processes stopped", "runtime", sd.name(), "id", t.info.ID,
				"error", rerr, "cause", err)
			return nil, fmt.Errorf("checkpoint of %s container %s failed: %w; and resuming it failed: %w",
				sd.name(), j.req.Container, err, rerr)
		}
		return nil, fmt.Errorf("checkpoint of %s container %s failed, it is still running: %w", sd.name(), j.req.Container, err)
	}
	committed := false
	defer func() {
		if r := recover(); r != nil {
			if !committed {
				_ = resumeStopped(t.pid) // a bug must not leave it stopped either
			}
			panic(r)
		}
	}()

	prog.Start("checkpointing", j.rss)
	ckStart := time.Now()
	staged, err := sd.checkpointStopped(ctx, t, j.imagesDir, srv.Dir(), j.o)
	connected, srvErr := srv.Wait()
	if err != nil && srvErr != nil {
		// CRIU failed because an image could not go on (a broken pipe).
		return fail(fmt.Errorf("%w\n  because an image did not reach the archive: %w", err, srvErr))
	}
	if err != nil {
		return fail(err)
	}
	if srvErr != nil {
		// CRIU finished, but an image did not reach the archive whole.
		return fail(fmt.Errorf("%w: %w", criu.ErrSinkFailed, srvErr))
	}
	res := &DumpResult{Path: j.path, Notes: j.notes, CheckpointTime: time.Since(ckStart)}
	if !connected {
		if staged == "" {
			staged = "CRIU did not connect to the image streamer"
		}
		s.log.Info("container memory staged, not streamed", "id", t.info.ID, "why", staged)
		res.Notes = append(res.Notes, "memory: staged as files, not streamed: "+staged)
	}
	if err := s.fault.At(fault.AfterFreeze); err != nil {
		return fail(err)
	}
	layerStart := time.Now()
	if _, layer, err := writeContainerFiles(j.staging, t); err != nil {
		return fail(err)
	} else {
		res.Layer, res.LayerTime = layer, time.Since(layerStart)
	}
	archStart := time.Now()
	if err := col.FinishDir(); err != nil {
		return fail(fmt.Errorf("writing the archive failed: %w", err))
	}
	m, size, err := w.Close(j.manifest(), nil)
	prog.Done()
	if err != nil {
		return fail(fmt.Errorf("writing the archive failed: %w", err))
	}
	res.ArchiveTime, res.Size, res.Manifest = time.Since(archStart), size, m
	committed = true
	switch {
	case j.req.LeaveRunning:
		rs := time.Now()
		if err := resumeStopped(t.pid); err != nil {
			return nil, fmt.Errorf("the archive %s was written, but resuming the container failed: %w", j.path, err)
		}
		res.ResumeTime = time.Since(rs)
	case j.req.KeepStopped:
		res.Stopped = &StoppedContainer{d: sd, t: t}
	default:
		if err := sd.kill(ctx, t); err != nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("the archive %s was written, but removing the stopped container failed: %v", j.path, err))
		}
		sd.finish(t)
	}
	res.Total = time.Since(j.start)
	if err := s.eng.RunHook(ctx, "post-dump", t.pid, j.path, j.req.HookEnv); err != nil {
		res.Warnings = append(res.Warnings, err.Error())
	}
	return res, nil
}

// resumeWait bounds how long resumed processes may take to leave the
// stopped state.
const resumeWait = 2 * time.Second

// resumeStopped sends SIGCONT to every stopped process of the tree
// rooted at pid (a container CRIU left stopped, or resumed itself after
// failing) and checks that none stays stopped.
func resumeStopped(pid int) error {
	pids, err := proc.Tree(pid)
	if err != nil {
		return fmt.Errorf("list the container's processes: %w", err)
	}
	var stopped []int
	for _, p := range pids {
		if st, err := proc.ReadStat(p); err == nil && (st.State == 'T' || st.State == 't') {
			_ = syscall.Kill(p, syscall.SIGCONT)
			stopped = append(stopped, p)
		}
	}
	deadline := time.Now().Add(resumeWait)
	for {
		var still []string
		for _, p := range stopped {
			if st, err := proc.ReadStat(p); err == nil && (st.State == 'T' || st.State == 't') {
				still = append(still, strconv.Itoa(p))
			}
		}
		if len(still) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %s are still STOPPED; resume them with `kill -CONT %s`",
				strings.Join(still, ", "), strings.Join(still, " "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// errStreamRestore marks a streamed restore that failed because the
// runtime's request could not be streamed.
var errStreamRestore = errors.New("this restore could not be streamed")
