package integration

import (
	"encoding/json"
	"fmt"
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
	ds := embeddedCluster(t, "a", "b")
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
	_ = fmt.Sprint
	_ = time.Second
}
