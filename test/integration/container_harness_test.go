package integration

// A harness for container tests: a busybox-static rootfs built at test
// time (no registry is reachable), runc bundles over it, and a Docker
// engine — the one already running if it can checkpoint, else a private
// dockerd (experimental mode, its own data root, exec root, socket and
// pidfile) started for the test and stopped, by PID, at its end. The
// tests talk to the engine over its HTTP API, like cedana does.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireContainers skips (or fails in CI) unless root, CRIU and the
// named programs are present.
func requireContainers(t *testing.T, programs ...string) {
	t.Helper()
	requireCRIU(t)
	for _, p := range programs {
		requireBinary(t, p)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		if inCI() {
			t.Fatal("/bin/busybox missing in CI (make setup installs busybox-static)")
		}
		t.Skip("skipping: /bin/busybox not installed (run `make setup`)")
	}
}

// lookDockerd finds dockerd (Debian puts it in /usr/sbin).
func lookDockerd(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("dockerd"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/dockerd"); err == nil {
		return "/usr/sbin/dockerd"
	}
	if inCI() {
		t.Fatal("dockerd missing in CI (make setup installs docker.io)")
	}
	t.Skip("skipping: dockerd not installed (run `make setup`)")
	return ""
}

// busyboxRootfs builds a rootfs of busybox-static with its applets as
// symlinks, and returns its path.
func busyboxRootfs(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "root", "www"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chroot", root, "/bin/busybox", "--install", "-s", "/bin").CombinedOutput(); err != nil {
		t.Fatalf("busybox --install: %v\n%s", err, out)
	}
	_ = os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	return root
}

// ctrEnv is a cedana environment for container tests: an isolated HOME
// and state directory, and a private runc root.
type ctrEnv struct {
	*env
	state    string // CEDANA_DAEMON_STATE_DIR: managed runc containers live in state/runc
	runcRoot string
}

func newCtrEnv(t *testing.T) *ctrEnv {
	t.Helper()
	e := newEnv(t)
	ce := &ctrEnv{env: e, state: filepath.Join(e.home, "state")}
	// runc's root holds unix sockets: keep its path short.
	dir, err := os.MkdirTemp("/tmp", "crr")
	if err != nil {
		t.Fatal(err)
	}
	ce.runcRoot = dir
	t.Cleanup(func() {
		// Kill and delete every container left in this runc root.
		out, _ := exec.Command("runc", "--root", dir, "list", "-q").Output()
		for _, id := range strings.Fields(string(out)) {
			_ = exec.Command("runc", "--root", dir, "kill", id, "KILL").Run()
			_ = exec.Command("runc", "--root", dir, "delete", "-f", id).Run()
		}
		unmountUnder(ce.state)
		os.RemoveAll(dir)
	})
	return ce
}

// run runs cedana with the environment's state directory.
func (ce *ctrEnv) run(args ...string) result {
	ce.t.Helper()
	return ce.cedanaWith([]string{"CEDANA_DAEMON_STATE_DIR=" + ce.state}, args...)
}

// runc runs the runc binary on the environment's root.
func (ce *ctrEnv) runc(args ...string) (string, error) {
	out, err := exec.Command("runc", append([]string{"--root", ce.runcRoot}, args...)...).CombinedOutput()
	return string(out), err
}

// runcPID returns the host PID of a runc container's init, or 0.
func (ce *ctrEnv) runcPID(id string) int {
	out, err := exec.Command("runc", "--root", ce.runcRoot, "state", id).Output()
	if err != nil {
		return 0
	}
	var st struct {
		Pid    int    `json:"pid"`
		Status string `json:"status"`
	}
	if json.Unmarshal(out, &st) != nil || st.Status != "running" {
		return 0
	}
	return st.Pid
}

// makeBundle writes an OCI bundle for rootfs running argv (no terminal,
// writable root) and returns its directory.
func makeBundle(t *testing.T, rootfs string, argv ...string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v\n%s", err, out)
	}
	editSpec(t, dir, func(spec map[string]any) {
		process := spec["process"].(map[string]any)
		process["terminal"] = false
		process["args"] = argv
		spec["root"] = map[string]any{"path": rootfs, "readonly": false}
	})
	return dir
}

// editSpec changes the bundle's config.json through edit.
func editSpec(t *testing.T, bundle string, edit func(spec map[string]any)) {
	t.Helper()
	p := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	edit(spec)
	data, _ = json.MarshalIndent(spec, "", "\t")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// unmountUnder lazily unmounts every mount below dir.
func unmountUnder(dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil || dir == "" {
		return
	}
	lines := strings.Split(string(data), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			_ = unix.Unmount(f[4], unix.MNT_DETACH)
		}
	}
}

// testDockerd is the Docker engine used by a test.
type testDockerd struct {
	t    *testing.T
	sock string
	api  *http.Client
	// own is set when the test started the engine (and stops it).
	own *exec.Cmd
	dir string
	// created are container IDs to remove at the end.
	created []string
}

// startDocker returns an engine that can checkpoint: the default one if
// it runs with experimental features, else a private dockerd.
func startDocker(t *testing.T) *testDockerd {
	t.Helper()
	dockerd := lookDockerd(t)
	if d := dialDocker(t, "/var/run/docker.sock"); d != nil {
		var info struct{ ExperimentalBuild bool }
		if d.get("/info", &info) == nil && info.ExperimentalBuild {
			t.Logf("using the running Docker engine at %s", d.sock)
			t.Cleanup(d.removeCreated)
			return d
		}
	}
	dir, err := os.MkdirTemp("/tmp", "cdk")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte(`{"experimental": true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "docker.sock")
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(dockerd, "--config-file", filepath.Join(dir, "daemon.json"),
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"-H", "unix://"+sock, "--pidfile", filepath.Join(dir, "docker.pid"),
		// No host firewall changes: the tests never leave the machine.
		"--iptables=false", "--ip-masq=false")
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	d := &testDockerd{t: t, sock: sock, own: cmd, dir: dir}
	d.api = dockerHTTP(sock)
	t.Cleanup(func() { d.stop(exited) })
	t.Cleanup(d.removeCreated)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := d.api.Get("http://docker/_ping"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			t.Fatalf("dockerd exited at start:\n%s", lastBytes(string(log), 3000))
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			t.Fatalf("dockerd did not answer within 30s:\n%s", lastBytes(string(log), 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return d
}

func dockerHTTP(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 60 * time.Second}
}

// dialDocker returns a client for an engine answering on sock, or nil.
func dialDocker(t *testing.T, sock string) *testDockerd {
	if _, err := os.Stat(sock); err != nil {
		return nil
	}
	d := &testDockerd{t: t, sock: sock, api: dockerHTTP(sock)}
	resp, err := d.api.Get("http://docker/_ping")
	if err != nil {
		return nil
	}
	resp.Body.Close()
	return d
}

// stop ends a private dockerd by PID: SIGTERM, then SIGKILL after 20s,
// and removes its directories.
func (d *testDockerd) stop(exited chan struct{}) {
	pid := d.own.Process.Pid
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-exited
		// Its containerd outlives a killed dockerd: end it by its pidfile.
		if data, err := os.ReadFile(filepath.Join(d.dir, "exec", "containerd", "containerd.pid")); err == nil {
			if cpid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && cpid > 1 {
				_ = syscall.Kill(cpid, syscall.SIGKILL)
			}
		}
	}
	unmountUnder(d.dir)
	_ = os.RemoveAll(d.dir)
}

// host is the engine's address for cedana's --docker-host.
func (d *testDockerd) host() string { return "unix://" + d.sock }

func (d *testDockerd) do(method, path string, q url.Values, body io.Reader, ctype string, out any) error {
	u := "http://docker/v1.41" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := d.api.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

func (d *testDockerd) get(path string, out any) error {
	return d.do(http.MethodGet, path, nil, nil, "", out)
}

func (d *testDockerd) post(path string, q url.Values, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	return d.do(http.MethodPost, path, q, rd, "application/json", out)
}

// importBusybox imports rootfs as image ref (docker import), once.
func (d *testDockerd) importBusybox(rootfs, ref string) {
	d.t.Helper()
	if d.get("/images/"+ref+"/json", nil) == nil {
		return
	}
	tarPath := filepath.Join(d.t.TempDir(), "rootfs.tar")
	if out, err := exec.Command("tar", "-C", rootfs, "-cf", tarPath, ".").CombinedOutput(); err != nil {
		d.t.Fatalf("tar rootfs: %v\n%s", err, out)
	}
	f, err := os.Open(tarPath)
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	repo, tag, _ := strings.Cut(ref, ":")
	q := url.Values{"fromSrc": {"-"}, "repo": {repo}, "tag": {tag}}
	if err := d.do(http.MethodPost, "/images/create", q, f, "application/x-tar", nil); err != nil {
		d.t.Fatalf("docker import: %v", err)
	}
}

// runContainer creates and starts a container of image running argv.
func (d *testDockerd) runContainer(name, image string, argv ...string) string {
	d.t.Helper()
	var out struct {
		ID string `json:"Id"`
	}
	if err := d.post("/containers/create", url.Values{"name": {name}}, map[string]any{"Image": image, "Cmd": argv}, &out); err != nil {
		d.t.Fatalf("create container %s: %v", name, err)
	}
	d.created = append(d.created, out.ID)
	if err := d.post("/containers/"+out.ID+"/start", nil, nil, nil); err != nil {
		d.t.Fatalf("start container %s: %v", name, err)
	}
	return out.ID
}

// dockerState is the part of a container's inspect document tests read.
type dockerState struct {
	ID    string `json:"Id"`
	State struct {
		Running bool
		Status  string
		Pid     int
	}
	NetworkSettings struct {
		IPAddress string
	}
}

func (d *testDockerd) inspect(id string) (*dockerState, error) {
	var st dockerState
	if err := d.get("/containers/"+id+"/json", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// pid returns a running container's init PID (failing the test if it is
// not running).
func (d *testDockerd) pid(id string) int {
	d.t.Helper()
	st, err := d.inspect(id)
	if err != nil {
		d.t.Fatal(err)
	}
	if !st.State.Running {
		d.t.Fatalf("container %s is %s, not running", id, st.State.Status)
	}
	return st.State.Pid
}

// remove force-removes a container.
func (d *testDockerd) remove(id string) {
	_ = d.do(http.MethodDelete, "/containers/"+id, url.Values{"force": {"1"}}, nil, "", nil)
}

// track registers a container created by cedana for removal.
func (d *testDockerd) track(id string) { d.created = append(d.created, id) }

func (d *testDockerd) removeCreated() {
	for _, id := range d.created {
		d.remove(id)
	}
}

// waitNotRunning waits until the engine reports the container stopped.
func (d *testDockerd) waitNotRunning(id string) {
	d.t.Helper()
	eventually(d.t, 15*time.Second, "container "+id+" to stop", func() bool {
		st, err := d.inspect(id)
		return err == nil && !st.State.Running
	})
}

// netnsRequest connects to addr from inside the network namespace of pid,
// half-closes, and returns what the server sent until it closed.
func netnsRequest(pid int, addr string) (string, error) {
	type reply struct {
		s   string
		err error
	}
	ch := make(chan reply, 1)
	go func() {
		// This thread changes network namespace; it is never unlocked
		// unless it got back, so a stray thread dies with the goroutine.
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- reply{err: err}
			return
		}
		defer self.Close()
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			ch <- reply{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- reply{err: err}
			return
		}
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		if err != nil {
			ch <- reply{err: err}
			return
		}
		defer conn.Close()
		_ = conn.(*net.TCPConn).CloseWrite()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		data, err := io.ReadAll(conn)
		ch <- reply{s: strings.TrimSpace(string(data)), err: err}
	}()
	r := <-ch
	return r.s, r.err
}

// inNetns runs a host program inside pid's network namespace.
func inNetns(pid int, argv ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "--"}, argv...)...).CombinedOutput()
	return string(out), err
}

// lastBytes returns the end of s, at most n bytes.
func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// counterCmd is a busybox shell loop writing an increasing counter to
// /count inside the container.
const counterCmd = `i=0; while :; do echo $i > /count.tmp; mv -f /count.tmp /count; i=$((i+1)); sleep 0.05; done`

// serverCmd is a TCP server on port 8080 whose state is a counter in the
// shell's memory: each connection is answered "count N".
const serverCmd = `i=0; while :; do i=$((i+1)); echo "count $i" | nc -l -p 8080; done`

// countFile is where a container's counter can be read from the host.
func countFile(pid int) string { return fmt.Sprintf("/proc/%d/root/count", pid) }

// waitCounter waits until the counter at path reaches at least n, and
// returns its value.
func waitCounter(t *testing.T, path string, n int) int {
	t.Helper()
	v := -1
	eventually(t, 10*time.Second, fmt.Sprintf("counter %s to reach %d", path, n), func() bool {
		v = readCounter(path)
		return v >= n
	})
	return v
}

// countOf parses "count N".
func countOf(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimPrefix(s, "count "))
	if err != nil {
		t.Fatalf("server answered %q, want \"count N\"", s)
	}
	return n
}
