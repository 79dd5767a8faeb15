package container

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/fault"
)

// runcDriver checkpoints OCI containers run with runc. Containers that
// Cedana starts (RunRunc) get a writable overlay layer over the bundle's
// rootfs, kept in Settings.StateDir/ID; their changes are that layer.
// For other runc containers, the changes are the overlay's upper
// directory when the rootfs is an overlay, else the files changed since
// the container was created.
type runcDriver struct {
	s    *Service
	bin  string
	criu string
}

var _ driver = (*runcDriver)(nil)

func newRuncDriver(s *Service) (*runcDriver, error) {
	bin := s.set.RuncBinary
	if bin == "" {
		bin = "runc"
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%w: runc not found (%v); install it (`apt-get install runc`, or `make setup`)", ErrUnavailable, err)
	}
	criuPath, err := s.criu.Path()
	if err != nil {
		return nil, err
	}
	return &runcDriver{s: s, bin: p, criu: criuPath}, nil
}

func (d *runcDriver) name() string { return Runc }

func (d *runcDriver) optionHint(opt string) string {
	switch opt {
	case "tcp-established", "ext-unix-sk", "file-locks":
		return "retry with --" + opt
	}
	return "set criu.network_lock (or --network-lock) to nftables"
}

// command builds a runc invocation with the global options.
func (d *runcDriver) command(ctx context.Context, args ...string) *exec.Cmd {
	return d.commandWith(ctx, d.criu, args...)
}

// commandWith is command with runc running criuPath as its CRIU.
func (d *runcDriver) commandWith(ctx context.Context, criuPath string, args ...string) *exec.Cmd {
	g := []string{}
	if d.s.set.RuncRoot != "" {
		g = append(g, "--root", d.s.set.RuncRoot)
	}
	g = append(g, "--criu", criuPath)
	return exec.CommandContext(ctx, d.bin, append(g, args...)...)
}

// runcState is the output of `runc state`.
type runcState struct {
	ID      string    `json:"id"`
	PID     int       `json:"pid"`
	Status  string    `json:"status"`
	Bundle  string    `json:"bundle"`
	Rootfs  string    `json:"rootfs"`
	Created time.Time `json:"created"`
}

// errNoRuncContainer means runc knows no container by that ID.
var errNoRuncContainer = errors.New("no such runc container")

func (d *runcDriver) state(ctx context.Context, id string) (*runcState, error) {
	cmd := d.command(ctx, "state", id)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if strings.Contains(msg, "does not exist") || strings.Contains(msg, "not exist") {
			return nil, errNoRuncContainer
		}
		return nil, fmt.Errorf("runc state %s: %v: %s", id, err, msg)
	}
	var st runcState
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		return nil, fmt.Errorf("runc state %s: %w", id, err)
	}
	return &st, nil
}

// runcTarget is the driver's data about a container being checkpointed.
type runcTarget struct {
	state *runcState
	// netns is the loopback recorded before the checkpoint.
	netns *netnsConfig
	// managed is the state of a container Cedana runs, or nil.
	managed *managedContainer
}

func (d *runcDriver) lookup(ctx context.Context, id string) (*target, error) {
	st, err := d.state(ctx, id)
	if errors.Is(err, errNoRuncContainer) {
		return nil, invalid("no runc container %q (see `runc%s list`)", id, d.rootFlag())
	}
	if err != nil {
		return nil, err
	}
	if st.Status != "running" {
		return nil, invalid("runc container %s is %s; only a running container can be checkpointed", id, st.Status)
	}
	t := &target{pid: st.PID, info: archive.ContainerInfo{Runtime: Runc, ID: st.ID, Bundle: st.Bundle}}
	rt := &runcTarget{state: st}
	t.priv = rt
	if rt.netns, err = captureNetns(st.PID); err != nil {
		return nil, err
	}
	netJSON, _ := json.MarshalIndent(rt.netns, "", "  ")
	t.extra = map[string][]byte{networkEntry: netJSON}
	if len(rt.netns.OtherLinks) > 0 {
		t.notes = append(t.notes, fmt.Sprintf("network: interfaces %s of the container are not restored (runc restores into an empty network namespace); whoever set them up must do it again, e.g. from a prestart hook. Its loopback and its addresses are restored",
			strings.Join(rt.netns.OtherLinks, ", ")))
	}
	if mc, err := d.s.loadManaged(st.ID); err == nil && filepath.Clean(mc.dir) == filepath.Clean(st.Bundle) {
		rt.managed = mc
		t.info.Bundle = mc.Meta.Bundle
		if t.config, err = os.ReadFile(mc.origConfig()); err != nil {
			return nil, err
		}
		upper := mc.upper()
		t.writeLayer = func(w io.Writer) (LayerStats, error) { return writeUpperDiff(w, upper) }
		return t, nil
	}
	if t.config, err = os.ReadFile(filepath.Join(st.Bundle, "config.json")); err != nil {
		return nil, fmt.Errorf("read the container's configuration: %w", err)
	}
	if upper := overlayUpper(st.Rootfs); upper != "" {
		t.notes = append(t.notes, fmt.Sprintf("rootfs: %s is an overlay; its upper directory %s is the container's writable layer", st.Rootfs, upper))
		t.writeLayer = func(w io.Writer) (LayerStats, error) { return writeUpperDiff(w, upper) }
		return t, nil
	}
	since := st.Created
	rootfs := st.Rootfs
	t.notes = append(t.notes, fmt.Sprintf("rootfs: %s is a plain directory; the archive carries the files changed since the container was created (%s), but not deletions. Containers started with `cedana run runc` carry exact changes",
		rootfs, since.Format(time.RFC3339)))
	t.writeLayer = func(w io.Writer) (LayerStats, error) { return writeChangedSince(w, rootfs, since) }
	return t, nil
}

func (d *runcDriver) rootFlag() string {
	if d.s.set.RuncRoot != "" {
		return " --root " + d.s.set.RuncRoot
	}
	return ""
}

func (d *runcDriver) stagingParent(context.Context) (string, error) { return "", nil }

// criuConfig writes the CRIU configuration file runc's CRIU reads through
// CRIU_CONFIG_FILE: the options runc 1.1 cannot pass itself.
func criuConfig(o criuOptions) (string, error) {
	p := filepath.Join(o.WorkDir, "criu.conf")
	conf := fmt.Sprintf("network-lock %s\n", o.NetworkLock)
	if o.LeaveStopped {
		// Over RPC, CRIU takes its configuration file's options where
		// runc's request sets none: runc never asks for leave_stopped
		// on a restore, and runc restore -d does not wait for the tree.
		conf += "leave-stopped\n"
	}
	return p, os.WriteFile(p, []byte(conf), 0o600)
}

func (d *runcDriver) checkpoint(ctx context.Context, t *target, imagesDir string, o criuOptions) error {
	if err := os.Mkdir(imagesDir, 0o700); err != nil {
		return err
	}
	conf, err := criuConfig(o)
	if err != nil {
		return err
	}
	args := append([]string{"checkpoint", "--image-path", imagesDir, "--work-path", o.WorkDir}, runcCRIUFlags(o)...)
	cmd := d.command(ctx, append(args, t.info.ID)...)
	cmd.Env = append(os.Environ(), "CRIU_CONFIG_FILE="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return explain("checkpoint", Runc, runcError(err, out), filepath.Join(o.WorkDir, "dump.log"), d.optionHint)
	}
	return nil
}

var _ memoryStreamer = (*runcDriver)(nil)

// bridge writes the per-operation CRIU bridge into o.WorkDir: the script
// runc runs as its CRIU. streamDir "" relays to the real CRIU.
func (d *runcDriver) bridge(o criuOptions, streamDir string, leaveStopped bool) (string, *criu.BridgeConfig, error) {
	self, err := os.Executable()
	if err != nil {
		return "", nil, fmt.Errorf("find the cedana executable for the CRIU bridge: %w", err)
	}
	cfg := &criu.BridgeConfig{CRIU: d.criu, Images: streamDir, LeaveStopped: leaveStopped}
	script, err := criu.WriteBridge(o.WorkDir, self, cfg)
	return script, cfg, err
}

// checkpointStopped runs `runc checkpoint --leave-running` with the CRIU
// bridge as runc's CRIU: the bridge streams the images to streamDir and
// turns "leave running" into "leave stopped", so that runc keeps the
// container and cedana kills or resumes it once the archive is durable.
func (d *runcDriver) checkpointStopped(ctx context.Context, t *target, imagesDir, streamDir string, o criuOptions) (string, error) {
	script, cfg, err := d.bridge(o, streamDir, true)
	if err != nil {
		return "", err
	}
	conf, err := criuConfig(o)
	if err != nil {
		return "", err
	}
	args := append([]string{"checkpoint", "--leave-running", "--image-path", imagesDir, "--work-path", o.WorkDir}, runcCRIUFlags(o)...)
	cmd := d.commandWith(ctx, script, append(args, t.info.ID)...)
	cmd.Env = append(os.Environ(), "CRIU_CONFIG_FILE="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", explain("checkpoint", Runc, runcError(err, out), filepath.Join(o.WorkDir, "dump.log"), d.optionHint)
	}
	return criu.BridgeLog(*cfg), nil
}

// kill ends a container that checkpointStopped left stopped.
func (d *runcDriver) kill(ctx context.Context, t *target) error {
	if out, err := d.command(ctx, "delete", "-f", t.info.ID).CombinedOutput(); err != nil {
		return runcError(err, out)
	}
	return nil
}

// runcError turns runc's exit status and output into an error.
func runcError(err error, out []byte) error {
	msg := strings.TrimSpace(string(out))
	// runc logs as logfmt: keep the messages only.
	var msgs []string
	hasLevels := strings.Contains(msg, "level=error") || strings.Contains(msg, "level=fatal")
	for _, l := range strings.Split(msg, "\n") {
		if hasLevels && strings.Contains(l, "level=") && !strings.Contains(l, "level=error") && !strings.Contains(l, "level=fatal") {
			continue // warnings of runc's cleanup
		}
		if i := strings.Index(l, `msg="`); i >= 0 {
			m := l[i+5:]
			if j := strings.LastIndex(m, `"`); j >= 0 {
				m = m[:j]
			}
			msgs = append(msgs, strings.ReplaceAll(m, `\n`, "; "))
		} else if strings.TrimSpace(l) != "" {
			msgs = append(msgs, strings.TrimSpace(l))
		}
	}
	if len(msgs) == 0 {
		return fmt.Errorf("runc: %v", err)
	}
	return fmt.Errorf("runc: %s", strings.Join(msgs, "; "))
}

func (d *runcDriver) resume(ctx context.Context, t *target, imagesDir string, o criuOptions) error {
	if err := d.s.fault.At(fault.ContainerResume); err != nil {
		return err
	}
	rt := t.priv.(*runcTarget)
	bundle := rt.state.Bundle
	logPath := filepath.Join(d.s.set.StateDir, "logs", t.info.ID+".log")
	if rt.managed != nil {
		if err := rt.managed.mount(); err != nil {
			return err
		}
		logPath = rt.managed.logPath()
	}
	work, err := d.s.eng.WorkDir(Runc+"-resume", t.info.ID, time.Now())
	if err != nil {
		return err
	}
	o.WorkDir = work
	_, err = d.runcRestore(ctx, t.info.ID, bundle, rt.managed, rt.netns, imagesDir, logPath, o, nil)
	return err
}

// finish removes the state of a managed container: runc deleted the
// container after its checkpoint, and the archive holds its layer.
func (d *runcDriver) finish(t *target) {
	if rt := t.priv.(*runcTarget); rt.managed != nil {
		rt.managed.remove()
	}
}

// runcRestore runs `runc restore -d` with stdio that matches what the
// checkpointed container had: a pipe where it had a pipe (logged to
// logPath), /dev/null elsewhere. For a managed container (mc), the
// bundle's configuration gets a prestart hook that restores netns, the
// recorded loopback. With src, the images are streamed from it (the
// memory pages from the archive) through the CRIU bridge. It returns the
// container's state.
func (d *runcDriver) runcRestore(ctx context.Context, id, bundle string, mc *managedContainer, netns *netnsConfig, imagesDir, logPath string, o criuOptions, src criu.ImageSource) (*runcState, error) {
	conf, err := criuConfig(o)
	if err != nil {
		return nil, err
	}
	criuPath := d.criu
	var (
		srv *criu.ImageStreamer
		cfg *criu.BridgeConfig
	)
	if src != nil {
		if srv, err = criu.ServeRestoreImages(imagesDir, src); err != nil {
			return nil, err
		}
		defer srv.Wait()
		if criuPath, cfg, err = d.bridge(o, srv.Dir(), false); err != nil {
			return nil, err
		}
	}
	if mc != nil && netns != nil {
		if err := mc.addNetnsHook(netns); err != nil {
			return nil, err
		}
	}
	stdio, cleanup, err := stdioFor(imagesDir, logPath)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	args := append([]string{"restore", "-d", "--image-path", imagesDir, "--work-path", o.WorkDir, "--bundle", bundle}, runcCRIUFlags(o)...)
	// runc's own messages go to a log: its stderr is the container's.
	runcLog := filepath.Join(o.WorkDir, "runc.log")
	cmd := d.commandWith(ctx, criuPath, append([]string{"--log", runcLog}, append(args, id)...)...)
	cmd.Env = append(os.Environ(), "CRIU_CONFIG_FILE="+conf)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio[0], stdio[1], stdio[2]
	runErr := cmd.Run()
	if srv != nil {
		connected, srvErr := srv.Wait()
		switch {
		case srvErr != nil:
			// An image could not be served whole (a damaged archive):
			// whatever runc restored must not run.
			_, _ = d.command(ctx, "delete", "-f", id).CombinedOutput()
			return nil, fmt.Errorf("restore stopped: %w", srvErr)
		case !connected && runErr != nil:
			_, _ = d.command(ctx, "delete", "-f", id).CombinedOutput()
			why := criu.BridgeLog(*cfg)
			if why == "" {
				why = "CRIU did not connect to the image streamer"
			}
			return nil, fmt.Errorf("%w: %s (its log: %s); restore it with criu.stream set to false", errStreamRestore, why, cfg.Log)
		}
	}
	if runErr != nil {
		out, _ := os.ReadFile(runcLog)
		_, _ = d.command(ctx, "delete", "-f", id).CombinedOutput()
		return nil, explain("restore", Runc, runcError(runErr, out), filepath.Join(o.WorkDir, "restore.log"), d.optionHint)
	}
	st, err := d.state(ctx, id)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// stdioFor returns the three descriptors a restored container gets, from
// the checkpoint's descriptors.json: for each of stdin, stdout and stderr
// that was a pipe, a new pipe (stdout and stderr logged to logPath by a
// detached relay); /dev/null otherwise. stdio[2] is nil when stderr should
// stay runc's own.
func stdioFor(imagesDir, logPath string) ([3]*os.File, func(), error) {
	var out [3]*os.File
	var closers []io.Closer
	cleanup := func() {
		for _, c := range closers {
			c.Close()
		}
	}
	var descs []string
	if data, err := os.ReadFile(filepath.Join(imagesDir, "descriptors.json")); err == nil {
		_ = json.Unmarshal(data, &descs)
	}
	for i := range out {
		isPipe := i < len(descs) && strings.HasPrefix(descs[i], "pipe:")
		if !isPipe {
			f, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
			if err != nil {
				cleanup()
				return out, nil, err
			}
			closers = append(closers, f)
			out[i] = f
			continue
		}
		r, w, err := os.Pipe()
		if err != nil {
			cleanup()
			return out, nil, err
		}
		if i == 0 {
			w.Close() // nobody writes to a restored container's stdin: it sees EOF
			closers = append(closers, r)
			out[i] = r
			continue
		}
		if err := startLogRelay(r, logPath); err != nil {
			r.Close()
			w.Close()
			cleanup()
			return out, nil, err
		}
		r.Close()
		closers = append(closers, w)
		out[i] = w
	}
	return out, cleanup, nil
}

// startLogRelay starts a detached process that appends everything read
// from r to logPath until every writer has closed the pipe (the
// container exited). It is `cat`, in its own session.
func startLogRelay(r *os.File, logPath string) error {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return err
	}
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	cat, err := exec.LookPath("cat")
	if err != nil {
		return fmt.Errorf("the container's log relay needs cat: %w", err)
	}
	cmd := exec.Command(cat)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r, lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the container's log relay: %w", err)
	}
	go func() { _ = cmd.Wait() }() // reap it if we live that long
	return nil
}

func (d *runcDriver) restore(ctx context.Context, m *archive.Manifest, dir string, req RestoreRequest, src criu.ImageSource) (*RestoreResult, error) {
	prepStart := time.Now()
	id := req.Name
	if id == "" {
		id = m.Container.ID
	}
	if err := checkRuncID(id); err != nil {
		return nil, err
	}
	if _, err := d.state(ctx, id); err == nil {
		if req.Migration {
			return nil, invalid("a runc container %q already exists on this node; remove it (`runc%s delete -f %s`) and migrate again", id, d.rootFlag(), id)
		}
		return nil, invalid("a runc container %q already exists; remove it (`runc%s delete -f %s`) or restore under another ID with --id", id, d.rootFlag(), id)
	} else if !errors.Is(err, errNoRuncContainer) {
		return nil, err
	}
	bundle := req.Bundle
	if bundle == "" {
		bundle = m.Container.Bundle
	}
	config, err := os.ReadFile(filepath.Join(dir, "container", configEntry))
	if err != nil {
		return nil, fmt.Errorf("the archive has no container configuration: %w", err)
	}
	lower, err := bundleRootfs(bundle, config)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(lower); err != nil || !st.IsDir() {
		if req.Migration {
			return nil, invalid("the container's base rootfs %s is missing on this node; a runc container migrates with its writable layer only: put its bundle's rootfs at the same path here and migrate again", lower)
		}
		return nil, invalid("the container's base rootfs %s is missing on this machine; pass --bundle DIR with the same rootfs the container was started from", lower)
	}
	mc, err := d.s.createManaged(id, bundle, lower, config)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			mc.remove()
		}
	}()
	lf, err := os.Open(filepath.Join(dir, "container", layerEntry))
	if err != nil {
		return nil, fmt.Errorf("the archive has no writable layer: %w", err)
	}
	_, err = applyToUpper(lf, mc.upper(), fileSize(lf))
	lf.Close()
	if err != nil {
		return nil, fmt.Errorf("put back the container's writable layer: %w", err)
	}
	if err := mc.mount(); err != nil {
		return nil, err
	}
	work, err := d.s.eng.WorkDir(Runc+"-restore", id, time.Now())
	if err != nil {
		return nil, err
	}
	o := criuOptions{TCPEstablished: m.Options.TCPEstablished, ExtUnixSockets: m.Options.ExtUnixSockets,
		FileLocks: m.Options.FileLocks, NetworkLock: networkLockOf(m), WorkDir: work, LeaveStopped: req.LeaveStopped}
	prepTime := time.Since(prepStart)
	rs := time.Now()
	netns, err := readNetnsConfig(dir)
	if err != nil {
		return nil, err
	}
	st, err := d.runcRestore(ctx, id, mc.dir, mc, netns, filepath.Join(dir, "images"), mc.logPath(), o, src)
	if err != nil {
		return nil, fmt.Errorf("restore of runc container %s failed: %w", id, err)
	}
	ok = true
	return &RestoreResult{ID: id, Name: id, PID: st.PID, Created: true,
		PrepareTime: prepTime, RestoreTime: time.Since(rs)}, nil
}

// checkRuncID refuses IDs runc would refuse, and any that could escape
// the state directory.
func checkRuncID(id string) error {
	if id == "" || len(id) > 1024 || id == "." || id == ".." {
		return invalid("bad container ID %q", id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '+') {
			return invalid("bad container ID %q: use letters, digits, '_', '-', '.', '+'", id)
		}
	}
	return nil
}

// bundleRootfs returns the absolute rootfs of an OCI configuration whose
// bundle is bundle.
func bundleRootfs(bundle string, config []byte) (string, error) {
	var spec struct {
		Root *struct {
			Path string `json:"path"`
		} `json:"root"`
	}
	if err := json.Unmarshal(config, &spec); err != nil {
		return "", invalid("the container's config.json is not valid JSON: %v", err)
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return "", invalid("the container's config.json names no root.path")
	}
	if filepath.IsAbs(spec.Root.Path) {
		return filepath.Clean(spec.Root.Path), nil
	}
	if bundle == "" {
		return "", invalid("no bundle known for the container; pass --bundle DIR")
	}
	abs, err := filepath.Abs(filepath.Join(bundle, spec.Root.Path))
	if err != nil {
		return "", err
	}
	return abs, nil
}

// RunRequest asks to start an OCI bundle with runc under Cedana.
type RunRequest struct {
	// Bundle is the OCI bundle directory (config.json and the rootfs).
	Bundle string
	// ID is the new container's ID.
	ID string
}

// RunResult describes a started container.
type RunResult struct {
	ID  string
	PID int
	// Log receives the container's stdout and stderr.
	Log string
	// StateDir holds its writable layer and derived bundle.
	StateDir string
}

// RunRunc starts a bundle with runc, detached, in a way that can be
// checkpointed: the rootfs gets a writable overlay layer of its own (the
// bundle's rootfs stays untouched), and stdout and stderr go through
// pipes to a log file rather than to host files CRIU cannot see.
func (s *Service) RunRunc(ctx context.Context, req RunRequest) (*RunResult, error) {
	d, err := newRuncDriver(s)
	if err != nil {
		return nil, err
	}
	if err := checkRuncID(req.ID); err != nil {
		return nil, err
	}
	bundle, err := filepath.Abs(req.Bundle)
	if err != nil {
		return nil, err
	}
	config, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, invalid("%s is not an OCI bundle: %v (create one with `runc spec`)", req.Bundle, err)
	}
	var spec struct {
		Process *struct {
			Terminal bool `json:"terminal"`
		} `json:"process"`
	}
	if err := json.Unmarshal(config, &spec); err != nil {
		return nil, invalid("%s/config.json is not valid JSON: %v", req.Bundle, err)
	}
	if spec.Process != nil && spec.Process.Terminal {
		return nil, invalid("%s/config.json asks for a terminal (process.terminal); set it to false: cedana runs the container detached and logs its output", req.Bundle)
	}
	if _, err := d.state(ctx, req.ID); err == nil {
		return nil, invalid("a runc container %q already exists", req.ID)
	} else if !errors.Is(err, errNoRuncContainer) {
		return nil, err
	}
	lower, err := bundleRootfs(bundle, config)
	if err != nil {
		return nil, err
	}
	mc, err := s.createManaged(req.ID, bundle, lower, config)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			mc.remove()
		}
	}()
	if err := mc.mount(); err != nil {
		return nil, err
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	var pipes [2]*os.File
	for i := range pipes {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		err = startLogRelay(r, mc.logPath())
		r.Close()
		if err != nil {
			w.Close()
			return nil, err
		}
		defer w.Close()
		pipes[i] = w
	}
	runcLog := filepath.Join(mc.dir, "runc.log")
	cmd := d.command(ctx, "--log", runcLog, "run", "-d", "--bundle", mc.dir, req.ID)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, pipes[0], pipes[1]
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(runcLog)
		return nil, fmt.Errorf("start runc container %s: %w", req.ID, runcError(err, out))
	}
	st, err := d.state(ctx, req.ID)
	if err != nil {
		return nil, err
	}
	ok = true
	return &RunResult{ID: req.ID, PID: st.PID, Log: mc.logPath(), StateDir: mc.dir}, nil
}

// networkLockOf returns the network lock a dump used (nftables if unset).
func networkLockOf(m *archive.Manifest) criu.NetworkLock {
	if l := criu.NetworkLock(m.Options.NetworkLock); l != criu.NetworkLockAuto && l.Valid() {
		return l
	}
	return criu.NetworkLockNFTables
}

// runcCRIUFlags are runc's flags for the CRIU options that checkpoint and
// restore both take.
func runcCRIUFlags(o criuOptions) []string {
	var flags []string
	if o.TCPEstablished {
		flags = append(flags, "--tcp-established")
	}
	if o.ExtUnixSockets {
		flags = append(flags, "--ext-unix-sk")
	}
	if o.FileLocks {
		flags = append(flags, "--file-locks")
	}
	return flags
}
