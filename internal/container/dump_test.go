package container

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/fault"
)

// fakeDriver is a runtime whose checkpoint writes a fake image and
// cancels the caller's context (a client that went away mid-dump), and
// whose in-place restore records how it was called.
type fakeDriver struct {
	pid       int
	cancel    context.CancelFunc
	resumeErr error

	resumed     bool
	resumeCtxOK bool
	sawImages   bool
}

func (f *fakeDriver) name() string { return Runc }
func (f *fakeDriver) lookup(context.Context, string) (*target, error) {
	return &target{pid: f.pid, config: []byte("{}"), info: archive.ContainerInfo{Runtime: Runc, ID: "c1", Name: "c1"},
		writeLayer: func(io.Writer) (LayerStats, error) { return LayerStats{}, nil }}, nil
}
func (f *fakeDriver) stagingParent(context.Context) (string, error) { return "", nil }
func (f *fakeDriver) checkpoint(_ context.Context, _ *target, imagesDir string, _ criuOptions) error {
	if err := os.Mkdir(imagesDir, 0o700); err != nil {
		return err
	}
	if f.cancel != nil {
		f.cancel()
	}
	return os.WriteFile(filepath.Join(imagesDir, "core-1.img"), []byte("core"), 0o600)
}
func (f *fakeDriver) resume(ctx context.Context, _ *target, imagesDir string, _ criuOptions) error {
	f.resumed, f.resumeCtxOK = true, ctx.Err() == nil
	_, err := os.Stat(filepath.Join(imagesDir, "core-1.img"))
	f.sawImages = err == nil
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return f.resumeErr
}
func (f *fakeDriver) finish(*target) {}
func (f *fakeDriver) restore(context.Context, *archive.Manifest, string, RestoreRequest, criu.ImageSource) (*RestoreResult, error) {
	return nil, errors.New("not implemented")
}
func (f *fakeDriver) optionHint(string) string { return "" }

// fakeService returns a Service whose only runtime is f, running a real
// process (describeTree reads it) and the real CRIU version check.
func fakeService(t *testing.T, f *fakeDriver, set checkpoint.Settings, faults ...string) *Service {
	t.Helper()
	if _, err := exec.LookPath("criu"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("criu missing in CI (make setup)")
		}
		t.Skip("skipping: needs criu on PATH (make setup)")
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	f.pid = cmd.Process.Pid
	set.LogDir = t.TempDir()
	set.StagingDir = t.TempDir()
	s := NewService(Settings{Engine: checkpoint.NewService(set, nil)}, nil)
	s.newDriver = func(string) (driver, error) { return f, nil }
	s.fault = fault.Steps(faults...)
	return s
}

// TestFailedDumpResumesDespiteCancel: the caller's context is cancelled
// while the runtime checkpoints (a client disconnect, a daemon shutting
// down) and the dump then fails: the container is still restored in
// place, on a context of its own.
func TestFailedDumpResumesDespiteCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := &fakeDriver{cancel: cancel}
	s := fakeService(t, f, checkpoint.Settings{}, fault.AfterFreeze)
	_, err := s.Dump(ctx, DumpRequest{Runtime: Runc, Container: "c1", Dir: t.TempDir()})
	if err == nil {
		t.Fatal("the dump succeeded despite the fault")
	}
	if !f.resumed || !f.resumeCtxOK || !f.sawImages {
		t.Fatalf("resume called %v, with a live context %v, with the images %v; want all true (error: %v)",
			f.resumed, f.resumeCtxOK, f.sawImages, err)
	}
	if !strings.Contains(err.Error(), "restored in place and runs again") {
		t.Errorf("the error does not say the container runs again: %v", err)
	}
}

// TestFailedDumpKeepsImagesWhenResumeFails: when the container cannot be
// restored in place either, its images are kept and the error says where.
func TestFailedDumpKeepsImagesWhenResumeFails(t *testing.T) {
	f := &fakeDriver{resumeErr: errors.New("runc restore: boom")}
	s := fakeService(t, f, checkpoint.Settings{}, fault.AfterFreeze)
	_, err := s.Dump(context.Background(), DumpRequest{Runtime: Runc, Container: "c1", Dir: t.TempDir()})
	if err == nil {
		t.Fatal("the dump succeeded despite the fault")
	}
	m := regexp.MustCompile(`kept in (\S+):`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("the error does not say where the images are: %v", err)
	}
	if _, serr := os.Stat(filepath.Join(m[1], "core-1.img")); serr != nil {
		t.Fatalf("the images are not in %s: %v", m[1], serr)
	}
	if !strings.Contains(err.Error(), "STOPPED") || !strings.Contains(err.Error(), "boom") {
		t.Errorf("the error does not say loudly that the container is stopped, and why: %v", err)
	}
	// A later cedana's stale-staging cleanup leaves them alone.
	checkpoint.NewService(checkpoint.Settings{StagingDir: filepath.Dir(filepath.Dir(m[1]))}, nil).RemoveStaleStaging()
	if _, serr := os.Stat(filepath.Join(m[1], "core-1.img")); serr != nil {
		t.Fatalf("stale-staging cleanup removed the kept images: %v", serr)
	}
}

// TestContainerDumpRunsHooks: containers run the pre- and post-dump hooks
// of processes, with the container's PID and the archive.
func TestContainerDumpRunsHooks(t *testing.T) {
	out := filepath.Join(t.TempDir(), "hooks")
	hook := `echo "$CEDANA_HOOK $CEDANA_PID $CEDANA_ARCHIVE $EXTRA" >> ` + out
	f := &fakeDriver{}
	s := fakeService(t, f, checkpoint.Settings{Hooks: checkpoint.Hooks{PreDump: hook, PostDump: hook}})
	res, err := s.Dump(context.Background(), DumpRequest{Runtime: Runc, Container: "c1", Dir: t.TempDir(), HookEnv: []string{"EXTRA=job-7"}})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(out)
	pid := strconv.Itoa(f.pid)
	want := "pre-dump " + pid + " " + res.Path + " job-7\npost-dump " + pid + " " + res.Path + " job-7\n"
	if string(data) != want {
		t.Errorf("hooks ran as\n%s\nwant\n%s", data, want)
	}
}
