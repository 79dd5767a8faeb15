package integration

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// migrate runs `cedana migrate JOB --to NODE -o json` on d.
func migrate(t *testing.T, d *testDaemon, job, to string) migrateInfo {
	t.Helper()
	r := d.ok("migrate", job, "--to", to, "-o", "json")
	var m migrateInfo
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("migrate -o json: %v\n%s", err, r.stdout)
	}
	t.Logf("migrated %s %s → %s: %s bytes, downtime %s ms, total %s ms, epoch %s", job, m.From, m.To, m.Bytes, m.DowntimeMS, m.TotalMS, m.Epoch)
	return m
}

// stillOn asserts that job runs on node, as the same PID as before when
// pid > 0, as the only copy, with its counter going on.
func stillOn(t *testing.T, d *testDaemon, job, node string, pid int, marker, ctr string) {
	t.Helper()
	j, ok := findJob(clusterJobs(t, d), job)
	if !ok || j.Node != node || j.State != "running" {
		t.Fatalf("job %s after a failed migration: %+v (found %v); want it running on %s", job, j, ok, node)
	}
	if pid > 0 && j.PID != pid {
		t.Fatalf("job %s runs as PID %d, want the same process %d as before the failed migration", job, j.PID, pid)
	}
	if cs := runningCopies(marker); len(cs) != 1 || cs[0] != j.PID {
		t.Fatalf("running copies of %s: %v; want exactly its PID %d", job, cs, j.PID)
	}
	checkContinues(t, ctr, readCounter(ctr))
}

// TestClusterEmbedded: two daemons, the first with an embedded NATS
// server on loopback with a token, the second joined to it. Nodes and ps
// are cluster-wide; a counter job migrates from a to b through the CLI of
// b (which forwards to the owner) — it continues from where it was, one
// copy runs at every moment (sampled every 5 ms), by PID and by its
// counter; a migration to an unknown node leaves it running.
func TestClusterEmbedded(t *testing.T) {
	ds, _ := embeddedCluster(t, "a", "b")
	a, b := ds[0], ds[1]
	nodes := waitNodes(t, b, 2)
	for _, n := range nodes {
		if n.CPUs <= 0 || n.CRIUVersion == "" || n.FreeMemory == "" || n.FreeMemory == "0" {
			t.Errorf("node %+v: want its CPU count, free memory and CRIU version", n)
		}
	}
	j, ctr, marker := markedCounter(t, a, "ctr", "--pid-namespace")
	js := clusterJobs(t, b)
	if got, ok := findJob(js, "ctr"); !ok || got.Node != "a" || got.ID != j.ID {
		t.Fatalf("ps on b: %+v; want job ctr (%s) on node a", js, j.ID)
	}
	if js := clusterJobs(t, b, "--node", "b"); len(js) != 0 {
		t.Fatalf("ps --node b: %+v; want nothing", js)
	}
	if r := b.cli("nodes"); r.code != 0 || !strings.Contains(r.stdout, "ready") {
		t.Fatalf("nodes: %s", r)
	}

	// To a node that does not exist: refused, the job runs on.
	r := b.cli("migrate", "ctr", "--to", "nowhere")
	if r.code == 0 || !strings.Contains(r.stderr, `no node "nowhere"`) {
		t.Fatalf("migrate to an unknown node: %s; want a non-zero exit naming the node", r)
	}
	stillOn(t, a, "ctr", "a", j.PID, marker, ctr)

	stop := make(chan struct{})
	seen := watchCopies(marker, ctr, stop)
	before := readCounter(ctr)
	m := migrate(t, b, "ctr", "b")
	checkContinues(t, ctr, before)
	// The job's history came along: its start on a, then its arrival.
	if ev := b.ok("events", "ctr").stdout; !strings.Contains(ev, "started") || !strings.Contains(ev, "migrated-in") {
		t.Errorf("events on b after the migration lack the job's history from a:\n%s", ev)
	}
	close(stop)
	if what := <-seen; what != "" {
		t.Fatal(what)
	}
	if m.From != "a" || m.To != "b" {
		t.Fatalf("migrate said %+v", m)
	}
	got, ok := findJob(clusterJobs(t, a), "ctr")
	if !ok || got.Node != "b" || got.State != "running" || got.ID != j.ID {
		t.Fatalf("after migration ps says %+v; want job %s running on b", got, j.ID)
	}
	if cs := runningCopies(marker); len(cs) != 1 || cs[0] != got.PID {
		t.Fatalf("copies after migration: %v; want exactly b's PID %d", cs, got.PID)
	}
	if alive(j.PID) && procState(j.PID) != 'Z' {
		t.Fatalf("the source copy (PID %d) still exists after the migration", j.PID)
	}
	if js := clusterJobs(t, a, "--node", "a"); len(js) != 0 {
		t.Fatalf("ps --node a after the migration: %+v; want nothing", js)
	}
	// And back, through a's CLI.
	before = readCounter(ctr)
	migrate(t, a, "ctr", "a")
	checkContinues(t, ctr, before)
	back, _ := findJob(clusterJobs(t, b), "ctr")
	if back.Node != "a" {
		t.Fatalf("after the migration back: %+v", back)
	}
	if cs := runningCopies(marker); len(cs) != 1 {
		t.Fatalf("copies after the second migration: %v", cs)
	}
}

// TestClusterRefusals: a migration that the target cannot take leaves
// the job running on the source, as the same process, saying why — a
// target whose checkpoint directory is a full (4 KiB) tmpfs, and a node
// started with wrong credentials, which refuses to start saying so and
// is therefore no node of the cluster.
func TestClusterRefusals(t *testing.T) {
	ds, url := embeddedCluster(t, "a")
	a := ds[0]
	full := startNode(t, "full", map[string]any{"nats_urls": url}, map[string]any{"checkpoint_dir": tinyTmpfs(t)})
	waitNodes(t, a, 2)
	j, ctr, marker := markedCounter(t, a, "ctr", "--pid-namespace")

	r := a.cli("migrate", "ctr", "--to", "full")
	t.Logf("refused: %s", r.stderr)
	if r.code == 0 || !strings.Contains(r.stderr, "not enough space") || !strings.Contains(r.stderr, "still runs on node a") {
		t.Fatalf("migrate to a node whose disk is full: %s; want a non-zero exit saying so", r)
	}
	stillOn(t, a, "ctr", "a", j.PID, marker, ctr)
	if js := clusterJobs(t, a, "--node", "full"); len(js) != 0 {
		t.Fatalf("the full node lists %+v after the refused migration", js)
	}
	_ = full

	// Wrong credentials: the daemon refuses to start, saying why.
	bad := newTestDaemon(t, daemonOpts{Config: map[string]any{"cluster": map[string]any{
		"node": "bad", "nats_urls": strings.Replace(url, "tok-", "wrong-", 1)}}})
	bad.launch()
	if code := bad.waitExit(20 * time.Second); code == 0 {
		t.Fatalf("a daemon with wrong NATS credentials exited 0")
	}
	if !strings.Contains(bad.log(), "refused the credentials") {
		t.Fatalf("the daemon with wrong credentials did not say why it stopped:\n%s", bad.log())
	}
	r = a.cli("migrate", "ctr", "--to", "bad")
	if r.code == 0 || !strings.Contains(r.stderr, `no node "bad"`) {
		t.Fatalf("migrate to the node with wrong credentials: %s; want a refusal", r)
	}
	stillOn(t, a, "ctr", "a", j.PID, marker, ctr)

	// Anonymous on a non-loopback address: refused at start.
	anon := newTestDaemon(t, daemonOpts{Config: map[string]any{"cluster": map[string]any{
		"node": "anon", "nats_listen": "0.0.0.0:" + fmt.Sprint(freePort(t))}}})
	anon.launch()
	if code := anon.waitExit(20 * time.Second); code == 0 || !strings.Contains(anon.log(), "never runs anonymously") {
		t.Fatalf("an embedded NATS server on 0.0.0.0 without a token: exit %d\n%s", code, anon.log())
	}
}

// TestClusterNATSRedis: three nats-server processes form a JetStream
// cluster (R3 buckets); two daemons, each in its own network namespace
// with its own address, join it with a user and password. A redis-server
// job (listening on TCP, in its own PID namespace) migrates from a to b:
// its data answers on b's address, and a's address no longer answers.
func TestClusterNATSRedis(t *testing.T) {
	redis := requireBinary(t, "redis-server")
	cli := requireBinary(t, "redis-cli")
	host, ns, ips := netNodes(t, 2)
	nc := startNATSCluster(t, host)
	a := startDaemon(t, daemonOpts{NetNS: ns[0], Config: map[string]any{"cluster": map[string]any{"node": "a", "nats_urls": nc.url(), "node_timeout": "3s"}}})
	b := startDaemon(t, daemonOpts{NetNS: ns[1], Config: map[string]any{"cluster": map[string]any{"node": "b", "nats_urls": nc.url(), "node_timeout": "3s"}}})
	waitNodes(t, a, 2)
	port := fmt.Sprint(freePort(t))
	a.runJob("redis", []string{"--pid-namespace"}, redis, "--port", port, "--bind", "0.0.0.0", "--save", "", "--appendonly", "no", "--protected-mode", "no")
	ask := func(ip string, args ...string) result {
		out, err := exec.Command(cli, append([]string{"-h", ip, "-p", port}, args...)...).Output()
		if err != nil {
			return result{stderr: err.Error(), code: 1}
		}
		return result{stdout: strings.TrimSpace(string(out))}
	}
	eventually(t, 10*time.Second, "redis to answer on a", func() bool { r := ask(ips[0], "PING"); return r.stdout == "PONG" })
	if r := ask(ips[0], "SET", "migrated", "yes-it-was"); r.stdout != "OK" {
		t.Fatalf("SET: %s", r)
	}
	migrate(t, b, "redis", "b")
	eventually(t, 10*time.Second, "redis to answer on b with its data", func() bool {
		return ask(ips[1], "GET", "migrated").stdout == "yes-it-was"
	})
	if r := ask(ips[0], "PING"); r.stdout == "PONG" {
		t.Fatalf("redis still answers on a's address after the migration")
	}
	if j, ok := findJob(clusterJobs(t, a), "redis"); !ok || j.Node != "b" || j.State != "running" {
		t.Fatalf("ps after the migration: %+v", j)
	}
}

// memLoopScript is a Python job holding mb MiB of random memory that
// writes an increasing counter to path (a migration then takes long
// enough to break something in the middle of it).
func memLoopScript(path string, mb int) string {
	return fmt.Sprintf(`import os, time
m = bytearray(os.urandom(%[2]d << 20))
i = 0
while True:
    with open(%[1]q + ".tmp", "w") as f:
        f.write(str(i))
    os.replace(%[1]q + ".tmp", %[1]q)
    i += 1
    time.sleep(0.02)
`, path, mb)
}

// TestClusterNATSServerKilled: the NATS server the source daemon is
// connected to is killed (SIGKILL) while a job holding 96 MiB migrates.
// Whatever the migration's outcome, exactly one copy of the job runs at
// every moment (sampled every 5 ms), its counter never goes back, ps
// names the node that runs it, and the two remaining servers carry a
// migration back.
func TestClusterNATSServerKilled(t *testing.T) {
	python := requireBinary(t, "python3")
	nc := startNATSCluster(t, "127.0.0.1")
	// A killed server's streams need a new leader before heartbeats land
	// again (seen: 4 s under load): a 3 s node timeout would call the
	// nodes down meanwhile.
	a := startNode(t, "a", map[string]any{"nats_urls": nc.url(), "node_timeout": "10s"}, nil)
	b := startNode(t, "b", map[string]any{"nats_urls": nc.url(), "node_timeout": "10s"}, nil)
	waitNodes(t, a, 2)
	ctr := filepath.Join(t.TempDir(), "counter")
	marker := fmt.Sprintf("cedana-test-marker-%d-natskill", time.Now().UnixNano())
	a.runJob("mem", []string{"--pid-namespace"}, python, "-c", memLoopScript(ctr, 96), marker)
	eventually(t, 20*time.Second, "the counter to start", func() bool { return readCounter(ctr) >= 3 })

	victim := nc.connectedTo(a.pid())
	if victim < 0 {
		t.Fatalf("daemon a has no connection to any NATS server of the cluster")
	}
	stop := make(chan struct{})
	seen := watchCopies(marker, ctr, stop)
	res := make(chan result, 1)
	// From a's CLI: a coordinates, and its connection is the one cut.
	go func() { res <- a.cli("migrate", "mem", "--to", "b") }()
	time.Sleep(300 * time.Millisecond) // the source is dumping or uploading
	nc.kill(victim)
	r := <-res
	t.Logf("killed NATS server n%d during the migration; migrate: %s", victim, r)
	time.Sleep(time.Second)
	close(stop)
	if what := <-seen; what != "" {
		t.Fatal(what)
	}
	// Failed before the hand-over: the job runs on a. After it (the
	// target could not confirm in time), it belongs to b, which resumes
	// its copy by itself (pendingTimeout/4 after a failed attempt).
	where := "a"
	if r.code == 0 || strings.Contains(r.stderr, "now belongs to node b") {
		where = "b"
	}
	var j clusterJob
	eventually(t, 40*time.Second, "ps to list the job on node "+where, func() bool {
		got := b.cli("ps", "-o", "json")
		var js []clusterJob
		if got.code != 0 || json.Unmarshal([]byte(got.stdout), &js) != nil {
			return false
		}
		var ok bool
		j, ok = findJob(js, "mem")
		return ok && j.Node == where && j.State == "running"
	})
	b.trackJobs([]jobInfo{j.jobInfo})
	if cs := runningCopies(marker); len(cs) != 1 || cs[0] != j.PID {
		t.Fatalf("copies running: %v; want exactly %s's PID %d", cs, where, j.PID)
	}
	checkContinues(t, ctr, readCounter(ctr))

	// Two servers of three keep the quorum: a migration still works, once
	// the streams the killed server led have a new leader (both nodes'
	// heartbeats land again; 4 s and more under load).
	waitNodes(t, a, 2)
	other := map[string]string{"a": "b", "b": "a"}[where]
	stop = make(chan struct{})
	seen = watchCopies(marker, ctr, stop)
	before := readCounter(ctr)
	migrate(t, a, "mem", other)
	checkContinues(t, ctr, before)
	close(stop)
	if what := <-seen; what != "" {
		t.Fatal(what)
	}
	if cs := runningCopies(marker); len(cs) != 1 {
		t.Fatalf("copies running after the second migration: %v", cs)
	}
}

// TestClusterTargetRestoreFails: the target's restore fails — here a job
// without its own PID namespace, whose PIDs the source's stopped copy
// still holds on this machine, so the target's restore gives up after
// client.pid_wait — and the job resumes on the source, as the same
// process, with the reason in the exit status and message.
func TestClusterTargetRestoreFails(t *testing.T) {
	ds, url := embeddedCluster(t, "a")
	a := ds[0]
	startDaemon(t, daemonOpts{Config: map[string]any{
		"cluster": map[string]any{"node": "b", "nats_urls": url, "node_timeout": "3s"},
		"client":  map[string]any{"pid_wait": "1s"},
	}})
	waitNodes(t, a, 2)
	j, ctr, marker := markedCounter(t, a, "plain") // no --pid-namespace
	r := a.cli("migrate", "plain", "--to", "b")
	if r.code == 0 || !strings.Contains(r.stderr, "still runs on node a") {
		t.Fatalf("migrate with a restore that fails on the target: %s; want a non-zero exit saying the job still runs on a", r)
	}
	t.Logf("refused as expected: %s", strings.TrimSpace(r.stderr))
	stillOn(t, a, "plain", "a", j.PID, marker, ctr)
	if js := clusterJobs(t, a, "--node", "b"); len(js) != 0 {
		t.Fatalf("node b still lists %+v after the failed migration", js)
	}
}
