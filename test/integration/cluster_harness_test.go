package integration

// A harness for cluster tests: several daemons on this machine, each its
// own node (own HOME, socket, state directory and node name), joined
// either to the embedded NATS server of the first one or to a cluster of
// three real nats-server processes started here.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// natsServerBin is the pinned nats-server that scripts/setup-servers.sh
// builds (`go install github.com/nats-io/nats-server/v2@v2.15.3`).
const natsServerBin = "/var/cache/cedana/bin/nats-server-v2.15.3"

// nodeInfo is what `nodes -o json` says of a node.
type nodeInfo struct {
	Name        string `json:"name"`
	State       string `json:"state"`
	CPUs        int    `json:"cpus"`
	FreeMemory  string `json:"free_memory"` // uint64: a string in protojson
	RunningJobs int    `json:"running_jobs"`
	CRIUVersion string `json:"criu_version"`
}

// clusterJob is what `ps -o json` says of a job in cluster mode.
type clusterJob struct {
	jobInfo
	Node string `json:"node"`
}

// migrateInfo is what `migrate -o json` says.
type migrateInfo struct {
	From       string  `json:"from"`
	To         string  `json:"to"`
	Bytes      string  `json:"bytes"`
	DowntimeMS string  `json:"downtime_ms"`
	TotalMS    string  `json:"total_ms"`
	Epoch      string  `json:"epoch"`
	MemoryMS   string  `json:"memory_ms"`
	Job        jobInfo `json:"job"`
}

// startNode starts a daemon as cluster node name with the given cluster
// settings (node is added) and extra daemon settings.
func startNode(t *testing.T, name string, cl map[string]any, daemon map[string]any) *testDaemon {
	t.Helper()
	c := map[string]any{"node": name, "node_timeout": "3s"}
	for k, v := range cl {
		c[k] = v
	}
	return startDaemon(t, daemonOpts{Config: map[string]any{"cluster": c}, Daemon: daemon})
}

// embeddedCluster starts node a with an embedded NATS server listening on
// loopback with a token, and nodes b… joined to it with that token. It
// returns them and the URL (with the token) other nodes join.
func embeddedCluster(t *testing.T, names ...string) ([]*testDaemon, string) {
	t.Helper()
	port := freePort(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	token := "tok-" + fmt.Sprint(time.Now().UnixNano())
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	first := startNode(t, names[0], map[string]any{"nats_listen": fmt.Sprintf("127.0.0.1:%d", port), "nats_token_file": tokenFile}, nil)
	out := []*testDaemon{first}
	url := fmt.Sprintf("nats://%s@127.0.0.1:%d", token, port)
	for _, n := range names[1:] {
		out = append(out, startNode(t, n, map[string]any{"nats_urls": url}, nil))
	}
	waitNodes(t, first, len(names))
	return out, url
}

// natsCluster is three nats-server processes forming a JetStream cluster
// on loopback, with a user and password.
type natsCluster struct {
	t     *testing.T
	procs []*exec.Cmd
	urls  []string
	ports []int
	user  string
	pass  string
}

// startNATSCluster starts three nats-server processes listening on host
// (clients and routes). A server that exits before it listens (a port
// freePort handed out was taken meanwhile, or handed out twice) makes the
// whole cluster start again on new ports, up to three times.
func startNATSCluster(t *testing.T, host string) *natsCluster {
	t.Helper()
	if _, err := os.Stat(natsServerBin); err != nil {
		if inCI() {
			t.Fatalf("%s is missing: make setup builds it (scripts/setup-servers.sh)", natsServerBin)
		}
		t.Skipf("%s is missing: run make setup (scripts/setup-servers.sh)", natsServerBin)
	}
	var why string
	for attempt := 1; attempt <= 3; attempt++ {
		nc, err := tryNATSCluster(t, host)
		if err == nil {
			return nc
		}
		why = err.Error()
		t.Logf("NATS cluster, attempt %d: %v", attempt, err)
	}
	t.Fatalf("no NATS cluster after 3 attempts: %s", why)
	return nil
}

func tryNATSCluster(t *testing.T, host string) (*natsCluster, error) {
	t.Helper()
	nc := &natsCluster{t: t, user: "cedana", pass: "pw-" + fmt.Sprint(time.Now().UnixNano())}
	dir := t.TempDir()
	var client, route [3]int
	taken := map[int]bool{}
	pick := func() int {
		for {
			if p := freePort(t); !taken[p] {
				taken[p] = true
				return p
			}
		}
	}
	for i := range 3 {
		client[i], route[i] = pick(), pick()
	}
	var routes []string
	for i := range 3 {
		routes = append(routes, fmt.Sprintf("nats-route://%s:%d", host, route[i]))
	}
	exited := make([]chan struct{}, 3)
	for i := range 3 {
		conf := fmt.Sprintf(`server_name: n%[1]d
listen: %[8]s:%[2]d
authorization { user: %[3]s, password: "%[4]s" }
jetstream { store_dir: "%[5]s/js%[1]d" }
cluster { name: cedana-test, listen: %[8]s:%[6]d, routes: [%[7]s] }
`, i, client[i], nc.user, nc.pass, dir, route[i], strings.Join(routes, ", "), host)
		path := filepath.Join(dir, fmt.Sprintf("n%d.conf", i))
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("n%d.log", i)))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(natsServerBin, "-c", path)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		logf.Close()
		nc.procs = append(nc.procs, cmd)
		nc.ports = append(nc.ports, client[i])
		nc.urls = append(nc.urls, fmt.Sprintf("nats://%s:%s@%s:%d", nc.user, nc.pass, host, client[i]))
		exited[i] = make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited[i]) }()
	}
	stopAll := func() {
		for i, p := range nc.procs {
			_ = p.Process.Kill() // by PID
			<-exited[i]
		}
	}
	// Daemons give up when no server answers: wait until all listen.
	for i := range 3 {
		addr := net.JoinHostPort(host, fmt.Sprint(client[i]))
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				break
			}
			select {
			case <-exited[i]:
				log, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("n%d.log", i)))
				stopAll()
				return nil, fmt.Errorf("nats-server n%d exited before it listened on %s:\n%s", i, addr, log)
			default:
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("n%d.log", i)))
				stopAll()
				return nil, fmt.Errorf("nats-server n%d did not listen on %s within 30 s:\n%s", i, addr, log)
			}
		}
	}
	t.Cleanup(stopAll)
	return nc, nil
}

// kill stops server i with SIGKILL.
func (nc *natsCluster) kill(i int) { _ = nc.procs[i].Process.Kill() }

// url is every server's URL, comma-separated.
func (nc *natsCluster) url() string { return strings.Join(nc.urls, ",") }

// waitNodes waits until d's cluster lists n ready nodes.
func waitNodes(t *testing.T, d *testDaemon, n int) []nodeInfo {
	t.Helper()
	var nodes []nodeInfo
	eventually(t, 20*time.Second, fmt.Sprintf("%d ready nodes", n), func() bool {
		r := d.cli("nodes", "-o", "json")
		nodes = nil
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &nodes) != nil {
			return false
		}
		ready := 0
		for _, x := range nodes {
			if x.State == "ready" {
				ready++
			}
		}
		return ready == n
	})
	return nodes
}

// clusterJobs is `ps -o json` on d, with each job's node.
func clusterJobs(t *testing.T, d *testDaemon, extra ...string) []clusterJob {
	t.Helper()
	r := d.ok(append([]string{"ps", "-o", "json"}, extra...)...)
	var js []clusterJob
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil {
		t.Fatalf("ps -o json: %v\n%s", err, r.stdout)
	}
	for _, j := range js {
		d.trackJobs([]jobInfo{j.jobInfo})
	}
	return js
}

// findJob returns the job named name in js.
func findJob(js []clusterJob, name string) (clusterJob, bool) {
	for _, j := range js {
		if j.Name == name {
			return j, true
		}
	}
	return clusterJob{}, false
}

// runningCopies are the roots of the job's copies (marker in their
// command line) that are not stopped: at most one may ever run.
func runningCopies(marker string) []int {
	var out []int
	for _, pid := range copies(marker) {
		st := procState(pid)
		if st == 'T' || st == 't' || st == 0 || exiting(pid) || inCRIU(pid) {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// inCRIU reports whether pid is traced by a CRIU process: a tree that CRIU
// is restoring (or dumping) runs CRIU's code, not its own, until CRIU lets
// it go — stopped, with --leave-stopped. Seen in
// TestClusterTargetFrozenDuringRestore: with the target's daemon frozen,
// its CRIU restore waits for the images the daemon serves, and the half
// restored task sits in state S, traced by CRIU, until the thaw.
func inCRIU(pid int) bool {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "TracerPid:"); ok {
			tracer := strings.TrimSpace(v)
			if tracer == "0" {
				return false
			}
			// CRIU's name is in its command line: make setup's criu is
			// a script that execs it through its own loader, whose name
			// is the process's comm.
			cmdline, _ := os.ReadFile("/proc/" + tracer + "/cmdline")
			args := strings.Split(string(cmdline), "\x00")
			for _, a := range args[:min(len(args), 8)] {
				if filepath.Base(a) == "criu" {
					return true
				}
			}
			return false
		}
	}
	return false
}

// exiting reports whether pid is dying: PF_EXITING in its flags (field 9
// of /proc/PID/stat), or a SIGKILL pending. A stopped copy that is killed
// is woken (state R) and may wait on a busy run queue before it exits,
// but it never returns to user space: it can make no progress.
//
// Likewise a SIGSTOP pending on an untraced task: the task stops on its
// way back to user space, before any instruction of its own. That is the
// lazy migration's source copy at the moment its CRIU exits (the tracer
// lets go, the SIGSTOP queued while it was frozen takes effect): seen
// once in six runs of TestClusterLazyMigrate as state R, TracerPid 0,
// ShdPnd 0x40000, which without this counted as a second running copy.
func exiting(pid int) bool {
	f := statFields(pid)
	if len(f) < 7 {
		return false
	}
	var flags uint64
	fmt.Sscan(f[6], &flags)
	if flags&0x4 != 0 {
		return true
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return true // gone
	}
	traced, stopPending := false, false
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if k == "TracerPid" {
			traced = v != "0"
			continue
		}
		if k != "SigPnd" && k != "ShdPnd" {
			continue
		}
		var mask uint64
		fmt.Sscanf(v, "%x", &mask)
		if mask&(1<<8) != 0 { // SIGKILL (9)
			return true
		}
		if mask&(1<<18) != 0 { // SIGSTOP (19)
			stopPending = true
		}
	}
	return stopPending && !traced
}

// pending describes pid's pending signals and tracer, for messages.
func pending(pid int) string {
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	var out []string
	for _, line := range strings.Split(string(status), "\n") {
		if k, _, ok := strings.Cut(line, ":"); ok && (k == "SigPnd" || k == "ShdPnd" || k == "TracerPid") {
			out = append(out, strings.Join(strings.Fields(line), " "))
		}
	}
	return strings.Join(out, ", ")
}

// confirmedRunning is runningCopies, each copy seen running again 2 ms
// later. A task woken by SIGKILL runs kernel code for a moment after the
// signal left its pending set and before it marks itself exiting: a source
// copy killed at the end of a migration was once counted running beside
// the target's (TestClusterDrain, PID gone by the time it was described).
// A copy that really runs is still there 2 ms later.
func confirmedRunning(marker string) []int {
	first := runningCopies(marker)
	if len(first) < 2 {
		return first
	}
	time.Sleep(2 * time.Millisecond)
	again := map[int]bool{}
	for _, pid := range runningCopies(marker) {
		again[pid] = true
	}
	var out []int
	for _, pid := range first {
		if again[pid] {
			out = append(out, pid)
		}
	}
	return out
}

// watchCopies samples, until stop is closed, how many copies of the job
// run and whether its counter ever goes back; it reports what it saw.
func watchCopies(marker, counter string, stop <-chan struct{}) <-chan string {
	done := make(chan string, 1)
	go func() {
		last, maxRunning, backwards, twice := -1, 0, "", ""
		for {
			select {
			case <-stop:
				if maxRunning > 1 {
					done <- fmt.Sprintf("%d copies ran at once (%s)", maxRunning, twice)
				} else {
					done <- backwards
				}
				return
			default:
			}
			if cs := confirmedRunning(marker); len(cs) > maxRunning {
				maxRunning = len(cs)
				if len(cs) > 1 {
					var desc []string
					for _, pid := range cs {
						f := statFields(pid)
						desc = append(desc, fmt.Sprintf("PID %d state %c stat %v (%s)", pid, procState(pid), f[:min(7, len(f))], pending(pid)))
					}
					twice = time.Now().UTC().Format("15:04:05.000") + " " + strings.Join(desc, "; ")
				}
			}
			if v := readCounter(counter); v >= 0 {
				if v < last && backwards == "" {
					backwards = fmt.Sprintf("the counter went back from %d to %d: a second copy ran from an older state", last, v)
				}
				if v > last {
					last = v
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return done
}

// netNodes makes a bridge with an address on the host and n network
// namespaces attached to it, one per node, and returns the host's
// address, the namespaces' names and their addresses. Everything is
// removed at the end of the test.
func netNodes(t *testing.T, n int) (host string, names, ips []string) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) is missing: the test needs network namespaces")
	}
	tag := fmt.Sprintf("%04x", time.Now().UnixNano()&0xffff)
	net := fmt.Sprintf("10.%d.%d", 200+int(time.Now().UnixNano()/7%50), int(time.Now().UnixNano()/13%250))
	br := "cbr" + tag
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("link", "add", br, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
	run("addr", "add", net+".1/24", "dev", br)
	run("link", "set", br, "up")
	for i := range n {
		ns, veth, peer := fmt.Sprintf("cns%s-%d", tag, i), fmt.Sprintf("cv%s%d", tag, i), fmt.Sprintf("cp%s%d", tag, i)
		run("netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		run("link", "add", veth, "type", "veth", "peer", "name", peer)
		run("link", "set", peer, "netns", ns)
		run("link", "set", veth, "master", br, "up")
		ip := fmt.Sprintf("%s.%d", net, i+2)
		run("-n", ns, "addr", "add", ip+"/24", "dev", peer)
		run("-n", ns, "link", "set", peer, "up")
		run("-n", ns, "link", "set", "lo", "up")
		names, ips = append(names, ns), append(ips, ip)
	}
	return net + ".1", names, ips
}

// connectedTo returns the index of the server of nc that process pid has
// a TCP connection to (from /proc/PID/net/tcp and its socket fds), or -1.
func (nc *natsCluster) connectedTo(pid int) int {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); ok && err == nil {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "01" || !inodes[f[9]] { // 01: ESTABLISHED
			continue
		}
		_, remote, _ := strings.Cut(f[2], ":")
		var port int
		fmt.Sscanf(remote, "%X", &port)
		for i, p := range nc.ports {
			if p == port {
				return i
			}
		}
	}
	return -1
}
