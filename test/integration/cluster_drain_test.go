package integration

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// drainedJob is one job of `node drain -o json`.
type drainedJob struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	To         string `json:"to"`
	Error      string `json:"error"`
	DowntimeMS string `json:"downtime_ms"`
	Placement  string `json:"placement"`
}

// drainReply is what `node drain -o json` prints.
type drainReply struct {
	Node nodeInfo     `json:"node"`
	Jobs []drainedJob `json:"jobs"`
}

// placedJob is what `run --node … -o json` says.
type placedJob struct {
	clusterJob
	Placement string `json:"placement"`
}

// nodeState is d's view of node's state ("" when it is not listed).
func nodeState(t *testing.T, d *testDaemon, node string) string {
	t.Helper()
	r := d.ok("nodes", "-o", "json")
	var nodes []nodeInfo
	if err := json.Unmarshal([]byte(r.stdout), &nodes); err != nil {
		t.Fatalf("nodes -o json: %v\n%s", err, r.stdout)
	}
	for _, n := range nodes {
		if n.Name == node {
			return n.State
		}
	}
	return ""
}

// natsNodes starts three nats-server processes (R3 buckets) and nodes
// a, b and c joined to them.
func natsNodes(t *testing.T) (a, b, c *testDaemon) {
	t.Helper()
	nc := startNATSCluster(t, "127.0.0.1")
	a = startNode(t, "a", map[string]any{"nats_urls": nc.url()}, nil)
	b = startNode(t, "b", map[string]any{"nats_urls": nc.url()}, nil)
	c = startNode(t, "c", map[string]any{"nats_urls": nc.url()}, nil)
	waitNodes(t, a, 3)
	return a, b, c
}

// runOn runs a counter job with `run --node node -o json` through d.
func runOn(t *testing.T, d *testDaemon, name, node string) placedJob {
	t.Helper()
	ctr := filepath.Join(t.TempDir(), "counter")
	r := d.ok("run", "--name", name, "--node", node, "--pid-namespace", "-o", "json", "--", "bash", "-c", counterScript(ctr))
	var j placedJob
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		t.Fatalf("run -o json: %v\n%s", err, r.stdout)
	}
	d.trackJobs([]jobInfo{j.jobInfo})
	if j.PID <= 0 || j.Node == "" || j.Placement == "" {
		t.Fatalf("run --node %s -o json: %s; want the job with its node and why", node, r.stdout)
	}
	t.Logf("job %s placed on %s: %s", name, j.Node, j.Placement)
	return j
}

// TestClusterDrain: on three nats-server processes (R3), node a runs
// three counter jobs; `node drain a`, typed
// on b, moves each of them away (placement spreads them over b and c).
// Each continues its count on its new node — from where it was, not from
// zero —, its source PID is gone, exactly one copy ran at every moment
// (sampled every 5 ms), and it keeps its ID and name. While a drains it
// takes no new job (plain run, run --node a, migrate --to a; auto skips
// it); the mark survives a kill -9 and restart of a's daemon; `node
// resume a`, typed on c, makes it take jobs again.
func TestClusterDrain(t *testing.T) {
	a, b, c := natsNodes(t)
	type job struct {
		info        jobInfo
		ctr, marker string
	}
	var js []job
	for i := range 3 {
		j, ctr, marker := markedCounter(t, a, fmt.Sprintf("d%d", i), "--pid-namespace")
		js = append(js, job{j, ctr, marker})
	}

	stop := make(chan struct{})
	var seen []<-chan string
	before := map[string]int{}
	for _, j := range js {
		seen = append(seen, watchCopies(j.marker, j.ctr, stop))
		before[j.info.Name] = readCounter(j.ctr)
	}
	t0 := time.Now()
	r := b.ok("node", "drain", "a", "-o", "json")
	t.Logf("node drain a with three jobs took %v", time.Since(t0).Round(time.Millisecond))
	close(stop)
	for _, s := range seen {
		if what := <-s; what != "" {
			t.Fatal(what)
		}
	}
	var rep drainReply
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("node drain -o json: %v\n%s", err, r.stdout)
	}
	t.Logf("drain: %s", r.stdout)
	if rep.Node.State != "draining" || len(rep.Jobs) != 3 {
		t.Fatalf("drain reply: %+v; want node a draining and three jobs", rep)
	}
	targets := map[string]int{}
	for _, d := range rep.Jobs {
		if d.To == "" || d.To == "a" || d.Placement == "" {
			t.Fatalf("job %s: %+v; want it moved off a with the reason of its target", d.Name, d)
		}
		targets[d.To]++
	}
	if targets["b"] == 0 || targets["c"] == 0 {
		t.Errorf("the drain put the jobs on %v; want both b and c used", targets)
	}
	all := clusterJobs(t, c)
	for _, j := range js {
		got, ok := findJob(all, j.info.Name)
		if !ok || got.ID != j.info.ID || got.State != "running" || got.Node == "a" {
			t.Fatalf("after the drain ps says %+v (found %v); want job %s (%s) running off a", got, ok, j.info.Name, j.info.ID)
		}
		if alive(j.info.PID) && procState(j.info.PID) != 'Z' {
			t.Fatalf("job %s's source PID %d still exists after the drain", j.info.Name, j.info.PID)
		}
		if cs := runningCopies(j.marker); len(cs) != 1 || cs[0] != got.PID {
			t.Fatalf("copies of %s after the drain: %v; want exactly %s's PID %d", j.info.Name, cs, got.Node, got.PID)
		}
		checkContinues(t, j.ctr, before[j.info.Name])
	}
	if js := clusterJobs(t, b, "--node", "a"); len(js) != 0 {
		t.Fatalf("node a still lists %+v after its drain", js)
	}

	// Draining: no new job, from any node, by any way.
	if s := nodeState(t, c, "a"); s != "draining" {
		t.Fatalf("nodes on c shows a %q; want draining", s)
	}
	if r := a.cli("run", "--name", "new", "--", "sleep", "60"); r.code == 0 || !strings.Contains(r.stderr, "node a is draining") {
		t.Fatalf("a plain run on the draining node: %s; want a refusal naming it", r)
	}
	if r := b.cli("run", "--name", "new", "--node", "a", "--", "sleep", "60"); r.code == 0 || !strings.Contains(r.stderr, "node a is draining") {
		t.Fatalf("run --node a while a drains: %s; want a refusal", r)
	}
	if r := b.cli("migrate", "d0", "--to", "a"); r.code == 0 || !strings.Contains(r.stderr, "draining") {
		t.Fatalf("migrate to the draining node: %s; want a refusal", r)
	}
	if j := runOn(t, a, "auto1", "auto"); j.Node == "a" {
		t.Fatalf("run --node auto on the draining node placed the job on it: %+v", j)
	}

	// The mark survives a crash and restart of a's daemon.
	a.restartDaemon()
	eventually(t, 10*time.Second, "a to be listed draining after its restart", func() bool {
		return nodeState(t, b, "a") == "draining"
	})
	if r := b.cli("run", "--name", "new", "--node", "a", "--", "sleep", "60"); r.code == 0 || !strings.Contains(r.stderr, "draining") {
		t.Fatalf("run --node a after a's restart: %s; want a refusal", r)
	}

	// Draining again: nothing left to move.
	r = c.ok("node", "drain", "a", "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || len(rep.Jobs) != 0 {
		t.Fatalf("a second drain: %s; want no jobs", r.stdout)
	}

	// Resume, from c: a takes jobs again.
	r = c.ok("node", "resume", "a")
	if !strings.Contains(r.stdout, "node a is ready") {
		t.Fatalf("node resume a: %s", r)
	}
	if s := nodeState(t, b, "a"); s != "ready" {
		t.Fatalf("after resume nodes shows a %q", s)
	}
	if j := runOn(t, b, "back", "a"); j.Node != "a" || j.State != "running" {
		t.Fatalf("run --node a after resume: %+v", j)
	}
}

// TestClusterRunPlacement: on three nats-server processes (R3), `run
// --node auto` spreads jobs over three idle nodes (one each, however fast they are started), `--node NAME`
// starts the job there, and `--node` is refused with the reason for an
// unknown node, a down node, and a daemon outside cluster mode.
func TestClusterRunPlacement(t *testing.T) {
	a, b, c := natsNodes(t)
	on := map[string]int{}
	for i := range 3 {
		j := runOn(t, a, fmt.Sprintf("p%d", i), "auto")
		if !strings.HasPrefix(j.Placement, "auto: first of 3 ready nodes") {
			t.Errorf("placement of p%d: %q", i, j.Placement)
		}
		on[j.Node]++
	}
	if on["a"] != 1 || on["b"] != 1 || on["c"] != 1 {
		t.Fatalf("three jobs with --node auto on three idle nodes went %v; want one each", on)
	}
	j4 := runOn(t, b, "p3", "auto")
	on[j4.Node]++
	for _, j := range clusterJobs(t, c) {
		if j.State != "running" || !alive(j.PID) {
			t.Fatalf("job %+v does not run", j)
		}
	}
	// The text output names the node and why.
	r := c.ok("run", "--name", "named", "--node", "b", "--", "sleep", "600")
	if !strings.Contains(r.stdout, "on node b: asked for (--node b)") {
		t.Fatalf("run --node b says %q; want the node and why", r.stdout)
	}
	if j, ok := findJob(clusterJobs(t, a), "named"); !ok || j.Node != "b" || j.State != "running" {
		t.Fatalf("the job run with --node b: %+v", j)
	}

	if r := a.cli("run", "--name", "x", "--node", "nowhere", "--", "sleep", "60"); r.code != 3 || !strings.Contains(r.stderr, `no node "nowhere"`) {
		t.Fatalf("run --node nowhere: %s; want exit 3 naming the node", r)
	}
	c.stop()
	eventually(t, 15*time.Second, "c to be down", func() bool { return nodeState(t, a, "c") == "down" })
	if r := a.cli("run", "--name", "x", "--node", "c", "--", "sleep", "60"); r.code == 0 || !strings.Contains(r.stderr, "node c is down") {
		t.Fatalf("run --node c while c is down: %s; want a refusal", r)
	}
	if j := runOn(t, b, "p4", "auto"); j.Node == "c" {
		t.Fatalf("auto placed a job on the down node")
	}

	plain := startDaemon(t, daemonOpts{})
	if r := plain.cli("run", "--name", "x", "--node", "auto", "--", "sleep", "60"); r.code == 0 || !strings.Contains(r.stderr, "--node needs a daemon in cluster mode") {
		t.Fatalf("run --node without cluster mode: %s; want a refusal", r)
	}
	if r := plain.cli("node", "drain", "a"); r.code == 0 || !strings.Contains(r.stderr, "cluster mode") {
		t.Fatalf("node drain without cluster mode: %s; want a refusal", r)
	}
}

// TestClusterDrainStays: a job whose only possible target refuses it (a
// node whose checkpoint directory is a full 4 KiB tmpfs) stays on the
// draining node as the same process, the drain exits non-zero and says
// why; once another node joins, draining again tries the full node
// first (it has fewer jobs), then moves the job to the new one.
func TestClusterDrainStays(t *testing.T) {
	ds, url := embeddedCluster(t, "a")
	a := ds[0]
	full := startNode(t, "full", map[string]any{"nats_urls": url}, map[string]any{"checkpoint_dir": tinyTmpfs(t)})
	waitNodes(t, a, 2)
	j, ctr, marker := markedCounter(t, a, "stays", "--pid-namespace")

	r := full.cli("node", "drain", "a")
	t.Logf("drain with only a full target (exit %d):\n%s\n%s", r.code, r.stdout, r.stderr)
	if r.code == 0 || !strings.Contains(r.stdout, "stayed on node a") || !strings.Contains(r.stdout, "not enough space") ||
		!strings.Contains(r.stderr, "1 of 1 running jobs stayed on node a") {
		t.Fatalf("drain whose only target is full: %s; want a non-zero exit and the job's reason", r)
	}
	stillOn(t, a, "stays", "a", j.PID, marker, ctr)
	if s := nodeState(t, full, "a"); s != "draining" {
		t.Fatalf("a is %q after a drain that left a job; want draining", s)
	}

	c := startNode(t, "c", map[string]any{"nats_urls": url}, nil)
	// A job on c ranks the full node first: the drain must fall back to c.
	c.runJob("busy", nil, "sleep", "600")
	eventually(t, 20*time.Second, "c to be ready with its job", func() bool {
		r := a.cli("nodes", "-o", "json")
		var nodes []nodeInfo
		_ = json.Unmarshal([]byte(r.stdout), &nodes)
		for _, n := range nodes {
			if n.Name == "c" {
				return n.State == "ready" && n.RunningJobs == 1
			}
		}
		return false
	})
	before := readCounter(ctr)
	r = a.ok("node", "drain", "a", "-o", "json")
	var rep drainReply
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || len(rep.Jobs) != 1 || rep.Jobs[0].To != "c" ||
		!strings.Contains(rep.Jobs[0].Error, "refused first: to full") {
		t.Fatalf("drain again with c ready: %s; want the job moved to c after full refused it", r.stdout)
	}
	t.Logf("second drain: %+v", rep.Jobs[0])
	checkContinues(t, ctr, before)
	got, ok := findJob(clusterJobs(t, a), "stays")
	if cs := runningCopies(marker); !ok || got.Node != "c" || len(cs) != 1 || cs[0] != got.PID {
		t.Fatalf("after the second drain: %+v, copies %v; want one copy on c", got, cs)
	}
}
