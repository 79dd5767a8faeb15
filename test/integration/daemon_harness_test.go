package integration

// A harness for tests of the daemon, after tailscale's tstest/integration:
// startDaemon writes a configuration into an isolated HOME, starts
// `cedana daemon start` as a subprocess with its stderr in a file, waits
// until `cedana daemon status` says it serves, and at the end stops it
// and kills, by PID, every job process it has seen.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// daemonOpts configure a test daemon. The socket, state_dir and
// metrics_addr keys are always set by the harness.
type daemonOpts struct {
	// Daemon holds extra keys of the configuration's daemon section
	// (tcp_addr, token_file, restore_backoff...).
	Daemon map[string]any
	// Config holds extra top-level keys (hooks, policy, client,
	// staging_dir...).
	Config map[string]any
	// Metrics serves /metrics on a free loopback port (MetricsAddr).
	Metrics bool
	// Binary is the cedana binary the daemon runs ("" = cedanaBin), and
	// Env extra variables for it (e.g. a fault binary and CEDANA_FAULT).
	Binary string
	Env    []string
	// NetNS runs the daemon in that network namespace (/run/netns/NAME),
	// with nsenter --net only, so that it shares the test's mounts.
	NetNS string
}

// testDaemon is a cedana daemon run by a test.
type testDaemon struct {
	t   *testing.T
	env *env
	// socket, stateDir and ckptDir are where the daemon keeps its things.
	socket, stateDir, ckptDir string
	// MetricsAddr is host:port of /metrics, when opts.Metrics is set.
	metricsAddr string
	// logPath receives the daemon's stderr, across restarts.
	logPath string
	// bin is the binary the daemon runs (daemonOpts.Binary).
	bin string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	seen   map[int]uint64  // job PIDs seen running → their start time
	jobIDs map[string]bool // jobs seen, whose cgroups cleanup empties
	// extraEnv is added to the daemon's environment at its next launch
	// (daemonOpts.Env, CEDANA_FAULT...).
	extraEnv []string
	// netns is daemonOpts.NetNS.
	netns string
}

// daemonReadyTimeout bounds how long a daemon may take to serve.
const daemonReadyTimeout = 15 * time.Second

// startDaemon starts a daemon in an isolated HOME and waits until it
// serves. It fails the test if the daemon does not come up.
func startDaemon(t *testing.T, opts daemonOpts) *testDaemon {
	t.Helper()
	d := newTestDaemon(t, opts)
	d.launch()
	d.waitReady()
	return d
}

// newTestDaemon prepares the directories and the configuration, and
// registers the cleanup, without starting anything.
func newTestDaemon(t *testing.T, opts daemonOpts) *testDaemon {
	t.Helper()
	requireCRIU(t)
	e := newEnv(t)
	// Unix socket paths are limited to 108 bytes: t.TempDir() paths are
	// too long for some test names, so the socket lives in a short dir.
	sockDir, err := os.MkdirTemp("/tmp", "cd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	base := t.TempDir()
	d := &testDaemon{
		t: t, env: e,
		socket:   filepath.Join(sockDir, "s"),
		stateDir: filepath.Join(base, "state"), // created by the daemon
		logPath:  filepath.Join(base, "daemon.log"),
		seen:     map[int]uint64{},
		bin:      cedanaBin,
		extraEnv: opts.Env,
		jobIDs:   map[string]bool{},
		netns:    opts.NetNS,
	}
	if opts.Binary != "" {
		d.bin = opts.Binary
	}
	d.ckptDir = filepath.Join(d.stateDir, "checkpoints")

	ds := map[string]any{"socket": d.socket, "state_dir": d.stateDir, "metrics_addr": ""}
	if opts.Metrics {
		d.metricsAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		ds["metrics_addr"] = d.metricsAddr
	}
	for k, v := range opts.Daemon {
		ds[k] = v
	}
	if v, ok := ds["checkpoint_dir"].(string); ok && v != "" {
		d.ckptDir = v
	}
	cfg := map[string]any{"daemon": ds}
	for k, v := range opts.Config {
		cfg[k] = v
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(e.home, ".cedana"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.home, ".cedana", "cedana_config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.cleanup)
	return d
}

// launch starts the daemon process (without waiting for it to serve).
func (d *testDaemon) launch() {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- cedana daemon start at %s ---\n", time.Now().Format(time.StampMilli))
	d.mu.Lock()
	cmd := exec.Command(d.bin, "daemon", "start")
	if d.netns != "" {
		cmd = exec.Command("nsenter", "--net=/run/netns/"+d.netns, d.bin, "daemon", "start")
	}
	cmd.Env = append(os.Environ(), "HOME="+d.env.home, "CEDANA_TOKEN=")
	cmd.Env = append(cmd.Env, d.extraEnv...)
	d.mu.Unlock()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: signals meant for the test never reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		d.t.Fatalf("start daemon: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	d.mu.Lock()
	d.cmd, d.exited = cmd, exited
	d.mu.Unlock()
}

// pid returns the daemon's PID.
func (d *testDaemon) pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cmd.Process.Pid
}

// running reports whether the daemon process is still there.
func (d *testDaemon) running() bool {
	d.mu.Lock()
	ch := d.exited
	d.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return false
	default:
		return true
	}
}

// waitReady polls `cedana daemon status` until it exits 0.
func (d *testDaemon) waitReady() {
	d.t.Helper()
	deadline := time.Now().Add(daemonReadyTimeout)
	var last result
	for time.Now().Before(deadline) {
		if !d.running() {
			d.t.Fatalf("the daemon exited before serving:\n%s", d.log())
		}
		if last = d.cli("daemon", "status"); last.code == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("the daemon did not serve within %v; last status: %s\ndaemon log:\n%s", daemonReadyTimeout, last, d.log())
}

// waitExit waits for the daemon to exit on its own (e.g. when it refuses
// to start) and returns its exit code.
func (d *testDaemon) waitExit(timeout time.Duration) int {
	d.t.Helper()
	d.mu.Lock()
	cmd, ch := d.cmd, d.exited
	d.mu.Unlock()
	select {
	case <-ch:
		return cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		d.t.Fatalf("the daemon still runs after %v", timeout)
		return -1
	}
}

// stop stops the daemon: SIGINT (jobs are left running), then SIGKILL
// after 5 s.
func (d *testDaemon) stop() {
	d.signalAndWait(syscall.SIGINT, 5*time.Second)
}

// crash kills the daemon with SIGKILL and waits until it is gone.
func (d *testDaemon) crash() {
	d.signalAndWait(syscall.SIGKILL, 5*time.Second)
}

func (d *testDaemon) signalAndWait(sig syscall.Signal, grace time.Duration) {
	d.mu.Lock()
	cmd, ch := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-ch:
		return
	case <-time.After(grace):
	}
	_ = cmd.Process.Kill()
	<-ch
}

// restartDaemon kills the daemon with SIGKILL, as a crash would, and
// starts a new one on the same configuration and state dir.
func (d *testDaemon) restartDaemon() {
	d.t.Helper()
	d.crash()
	d.launch()
	d.waitReady()
}

// log returns what the daemon wrote to stderr.
func (d *testDaemon) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

// cleanup lists the jobs (to learn their current PIDs), stops the daemon,
// then kills every job process it saw, by PID and only if that PID still
// belongs to the same process. It shows the daemon's log if the test
// failed.
func (d *testDaemon) cleanup() {
	if d.running() {
		d.jobsQuiet()
	}
	d.stop()
	d.endWatchdog()
	d.mu.Lock()
	seen := make(map[int]uint64, len(d.seen))
	for p, st := range d.seen {
		seen[p] = st
	}
	d.mu.Unlock()
	for pid, st := range seen {
		if startTime(pid) != st {
			continue // gone, or the PID now belongs to someone else
		}
		for _, c := range descendants(pid) {
			_ = syscall.Kill(c, syscall.SIGKILL)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	d.mu.Lock()
	ids := make([]string, 0, len(d.jobIDs))
	for id := range d.jobIDs {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	for _, id := range ids { // what is left in the jobs' own cgroups
		dir := jobCgroupDir(id)
		if dir == "" {
			continue
		}
		// Cluster nodes keep theirs under cedana/<node>/.
		more, _ := filepath.Glob(filepath.Join(filepath.Dir(dir), "*", id))
		for _, dir := range append(more, dir) {
			if _, err := os.Stat(dir); err != nil {
				continue
			}
			_ = os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0)
			_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
			for i := 0; i < 50 && os.Remove(dir) != nil; i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	if d.t.Failed() {
		d.t.Logf("daemon log (%s):\n%s", d.logPath, d.log())
	}
}

// track remembers a job process so that cleanup can kill it.
func (d *testDaemon) track(pid int) {
	if pid <= 0 {
		return
	}
	if st := startTime(pid); st != 0 {
		d.mu.Lock()
		d.seen[pid] = st
		d.mu.Unlock()
	}
}

// startTime returns field 22 of /proc/PID/stat, or 0 if pid is gone.
func startTime(pid int) uint64 {
	f := statFields(pid)
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// procState returns the state letter of pid (R, S, T, Z...), or 0.
func procState(pid int) byte {
	f := statFields(pid)
	if len(f) == 0 || f[0] == "" {
		return 0
	}
	return f[0][0]
}

// statFields returns the fields of /proc/PID/stat after the command name:
// [0] is the state (field 3).
func statFields(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return nil
	}
	return strings.Fields(s[i+2:])
}

// cli runs cedana against this daemon. It is safe to call from any
// goroutine: it never fails the test itself.
func (d *testDaemon) cli(args ...string) result {
	return d.cliWith(nil, args...)
}

func (d *testDaemon) cliWith(extraEnv []string, args ...string) result {
	return runCedana(d.env.home, extraEnv, args...)
}

// runCedana runs the binary with HOME set; a failure to start it is
// reported as exit code -1.
func runCedana(home string, extraEnv []string, args ...string) result {
	cmd := exec.Command(cedanaBin, args...)
	cmd.Env = append(os.Environ(), "HOME="+home, "CEDANA_TOKEN=")
	cmd.Env = append(cmd.Env, extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		return result{stderr: fmt.Sprintf("run cedana %v: %v", args, err), code: -1}
	}
	return result{stdout: strings.TrimSpace(out.String()), stderr: errb.String(), code: code}
}

// ok runs cedana and fails the test unless it exits 0.
func (d *testDaemon) ok(args ...string) result {
	d.t.Helper()
	r := d.cli(args...)
	if r.code != 0 {
		d.t.Fatalf("cedana %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// jobInfo is what `ps -o json` says of a job.
type jobInfo struct {
	ID               string `json:"id"`
	Name             string `json:"name"`
	State            string `json:"state"`
	PID              int    `json:"pid"`
	Restores         int    `json:"restores"`
	Error            string `json:"error"`
	LogPath          string `json:"log_path"`
	LastCheckpointID string `json:"last_checkpoint_id"`
}

// ckptInfo is what `checkpoints -o json` says of a checkpoint.
type ckptInfo struct {
	ID    string `json:"id"`
	JobID string `json:"job_id"`
	Path  string `json:"path"`
	State string `json:"state"`
	Size  string `json:"size"` // int64: a string in protojson
	Error string `json:"error"`
}

// eventInfo is what `events -o json` says of an event.
type eventInfo struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// jobs lists the jobs and remembers their PIDs.
func (d *testDaemon) jobs() []jobInfo {
	d.t.Helper()
	r := d.ok("ps", "-o", "json")
	var js []jobInfo
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil {
		d.t.Fatalf("ps -o json: %v\n%s", err, r.stdout)
	}
	d.trackJobs(js)
	return js
}

// jobsQuiet is jobs for cleanup: it never fails the test.
func (d *testDaemon) jobsQuiet() {
	r := d.cli("ps", "-o", "json")
	var js []jobInfo
	if r.code == 0 && json.Unmarshal([]byte(r.stdout), &js) == nil {
		d.trackJobs(js)
	}
}

func (d *testDaemon) trackJobs(js []jobInfo) {
	for _, j := range js {
		d.mu.Lock()
		d.jobIDs[j.ID] = true
		d.mu.Unlock()
		if j.State == "running" || j.State == "dumping" || j.State == "restoring" {
			d.track(j.PID)
		}
	}
}

// job returns the job named (or with the ID) ref.
func (d *testDaemon) job(ref string) jobInfo {
	d.t.Helper()
	for _, j := range d.jobs() {
		if j.Name == ref || j.ID == ref {
			return j
		}
	}
	d.t.Fatalf("no job %s in ps", ref)
	return jobInfo{}
}

// runJob starts argv as job name with extra flags (policy...) and
// returns it as ps shows it.
func (d *testDaemon) runJob(name string, flags []string, argv ...string) jobInfo {
	d.t.Helper()
	args := append([]string{"run", "--name", name, "-o", "json"}, flags...)
	args = append(append(args, "--"), argv...)
	r := d.ok(args...)
	var j jobInfo
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		d.t.Fatalf("run -o json: %v\n%s", err, r.stdout)
	}
	d.track(j.PID)
	d.trackJobs([]jobInfo{j})
	if j.Name != name || j.PID <= 0 {
		d.t.Fatalf("run returned %+v", j)
	}
	return j
}

// waitJob polls ps until cond holds for job ref, and returns it.
func (d *testDaemon) waitJob(ref string, timeout time.Duration, what string, cond func(jobInfo) bool) jobInfo {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	var j jobInfo
	for {
		j = d.job(ref)
		if cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out after %v waiting for job %s to be %s; it is %+v", timeout, ref, what, j)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkpoints lists a job's checkpoints (all when job is ""), newest first.
func (d *testDaemon) checkpoints(job string) []ckptInfo {
	d.t.Helper()
	args := []string{"checkpoints", "-o", "json"}
	if job != "" {
		args = append(args, job)
	}
	r := d.ok(args...)
	var cs []ckptInfo
	if err := json.Unmarshal([]byte(r.stdout), &cs); err != nil {
		d.t.Fatalf("checkpoints -o json: %v\n%s", err, r.stdout)
	}
	return cs
}

// complete returns the complete checkpoints among cs.
func complete(cs []ckptInfo) []ckptInfo {
	var out []ckptInfo
	for _, c := range cs {
		if c.State == "complete" {
			out = append(out, c)
		}
	}
	return out
}

// events returns a job's events.
func (d *testDaemon) events(job string) []eventInfo {
	d.t.Helper()
	r := d.ok("events", job, "-o", "json")
	var es []eventInfo
	if err := json.Unmarshal([]byte(r.stdout), &es); err != nil {
		d.t.Fatalf("events -o json: %v\n%s", err, r.stdout)
	}
	return es
}

// hasEvent reports whether es has an event of type typ.
func hasEvent(es []eventInfo, typ string) bool {
	for _, e := range es {
		if e.Type == typ {
			return true
		}
	}
	return false
}

// restoreJob restores a job through the daemon and returns it.
func (d *testDaemon) restoreJob(ref string, extra ...string) jobInfo {
	d.t.Helper()
	r := d.ok(append([]string{"restore", "job", ref, "-o", "json"}, extra...)...)
	var j jobInfo
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		d.t.Fatalf("restore job -o json: %v\n%s", err, r.stdout)
	}
	d.track(j.PID)
	return j
}

// dumpJob checkpoints a job through the daemon and returns the checkpoint.
func (d *testDaemon) dumpJob(ref string, extra ...string) ckptInfo {
	d.t.Helper()
	r := d.ok(append([]string{"dump", "job", ref, "-o", "json"}, extra...)...)
	var c ckptInfo
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
		d.t.Fatalf("dump job -o json: %v\n%s", err, r.stdout)
	}
	return c
}

// loudCounterScript is counterScript that also prints "tick N" to stdout,
// so that the job's log shows its progress.
func loudCounterScript(path string) string {
	return fmt.Sprintf(`i=0; while :; do echo $i > %[1]s.tmp; mv -f %[1]s.tmp %[1]s; echo "tick $i"; i=$((i+1)); sleep 0.05; done`, path)
}

// waitGone waits until pid has exited (or is a zombie).
func waitGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("PID %d to exit", pid), func() bool { return !alive(pid) })
}

// setCrashpoint makes the daemon's next launches kill themselves at the
// named step (a cedana built with -tags faults, CEDANA_FAULT); "" clears
// it. The daemon keeps running the fault binary afterwards, which behaves
// as cedanaBin without CEDANA_FAULT.
func (d *testDaemon) setCrashpoint(name string) {
	bin := faultBinary(d.t)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.bin = bin
	d.extraEnv = slices.DeleteFunc(d.extraEnv, func(kv string) bool { return strings.HasPrefix(kv, "CEDANA_FAULT=") })
	if name != "" {
		d.extraEnv = append(d.extraEnv, "CEDANA_FAULT="+name)
	}
}

// jobCgroupDir returns the directory of a job's cgroup (cgroup v2), or ""
// where there is no cgroup v2 hierarchy.
func jobCgroupDir(jobID string) string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f, fs := strings.Fields(pre), strings.Fields(post)
		if ok && len(fs) > 0 && fs[0] == "cgroup2" && len(f) >= 5 && f[3] == "/" {
			return filepath.Join(f[4], "cedana", jobID)
		}
	}
	return ""
}

// cgroupProcs lists the processes in a job's cgroup (nil without one).
func cgroupProcs(jobID string) []int {
	dir := jobCgroupDir(jobID)
	if dir == "" {
		return nil
	}
	data, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	var out []int
	for _, f := range strings.Fields(string(data)) {
		if p, err := strconv.Atoi(f); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// copies counts the running copies of a job: processes whose command line
// holds marker and whose parent's does not (a shell's short-lived forks
// carry its command line too, under it).
func copies(marker string) []int {
	ents, _ := os.ReadDir("/proc")
	has := map[int]bool{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || procState(pid) == 'Z' {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmd, []byte(marker)) {
			has[pid] = true
		}
	}
	var roots []int
	for pid := range has {
		f := statFields(pid)
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if !has[ppid] {
			roots = append(roots, pid)
		}
	}
	return roots
}

// endWatchdog kills the fence watchdog a cluster daemon started (by the
// PID in its state directory, checked by its command line).
func (d *testDaemon) endWatchdog() {
	b, err := os.ReadFile(filepath.Join(d.stateDir, "fence-watchdog.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), "fence-watchdog") {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// watchdogPID is the PID of the daemon's fence watchdog, or 0.
func (d *testDaemon) watchdogPID() int {
	b, err := os.ReadFile(filepath.Join(d.stateDir, "fence-watchdog.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}
