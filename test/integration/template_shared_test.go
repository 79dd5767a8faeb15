package integration

// Templates in shared storage: made on one node, listed and cloned on
// another. In a cluster without a storage backend they live in the
// cluster's JetStream object store; with storage.backend s3 (versitygw)
// in the bucket. A damaged template object is refused before anything is
// restored, and an unreachable store is named in the error.

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// templateInfo is what `template ls -o json` says of a template.
type templateInfo struct {
	Name     string  `json:"name"`
	Node     string  `json:"node"`
	Location string  `json:"location"`
	Listen   []int32 `json:"listen"`
}

func listTemplates(t *testing.T, d *testDaemon) []templateInfo {
	t.Helper()
	var ts []templateInfo
	r := d.ok("template", "ls", "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &ts); err != nil {
		t.Fatalf("template ls -o json: %v\n%s", err, r.stdout)
	}
	return ts
}

// archivesUnder lists the *.zip files under dir: a clone must not have
// copied the template's archive to the node's disk.
func archivesUnder(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() && strings.HasSuffix(p, ".zip") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// checkClonesAnswer fails unless every clone of rep answers want on port.
func checkClonesAnswer(t *testing.T, rep cloneReport, port int, want string) {
	t.Helper()
	for _, c := range rep.Clones {
		if got := getBody("http://"+hostPort(c.Job.Address, port)+"/", 5*time.Second); got != want {
			t.Fatalf("clone %s at %s answered %q, want the template's state %q", c.Job.Name, c.Job.Address, got, want)
		}
	}
}

// TestTemplateSharedCluster: two nodes of a cluster (node a's embedded
// NATS) and no storage backend. A template made on a lives in the
// cluster's object store: b lists it (with node a and its nats://
// location), clones it — the clones answer with the template's state —
// without a copy of the archive on its disk, and reuses the images the
// second time. The name is taken cluster-wide; rm on b removes it for a.
func TestTemplateSharedCluster(t *testing.T) {
	python := requireTemplates(t)
	nodes, _ := embeddedCluster(t, "a", "b")
	a, b := nodes[0], nodes[1]
	killClonesAtEnd(t, a)
	killClonesAtEnd(t, b)
	port := freePort(t)
	a.runJob("svc", []string{"--pid-namespace"}, slowService(t, python, port, 1, 0)...)
	want := waitAnswer(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/", 60*time.Second)
	a.ok("template", "create", "web", "--job", "svc")

	ts := listTemplates(t, b)
	if len(ts) != 1 || ts[0].Name != "web" || ts[0].Node != "a" || !strings.HasPrefix(ts[0].Location, "nats://") ||
		!strings.Contains(ts[0].Location, "/cedana_templates/templates/web/") {
		t.Fatalf("template ls on node b: %+v; want web made on a, in the cluster's object store", ts)
	}
	if out := b.ok("template", "ls").stdout; !strings.Contains(out, "nats://") {
		t.Fatalf("template ls does not say where the template lives:\n%s", out)
	}

	rep := startClones(t, b, "--from-template", "web", "--count", "2", "--ready", "http:/")
	if len(rep.Clones) != 2 || rep.CacheHit {
		t.Fatalf("clones on b: %+v", rep)
	}
	checkClonesAnswer(t, rep, port, want)
	if z := archivesUnder(b.stateDir); len(z) > 0 {
		t.Fatalf("cloning copied the archive to node b's disk: %v", z)
	}
	rep2 := startClones(t, b, "--from-template", "web", "--name", "again", "--ready", "http:/")
	if !rep2.CacheHit {
		t.Fatalf("the second run on b did not reuse the images: %+v", rep2)
	}
	t.Logf("node b: checks and images before the first restore: %s µs (fetched from the store), then %s µs (cached); ready %s µs, then %s µs",
		rep.Prepare, rep2.Prepare, rep.Clones[0].ReadyUs, rep2.Clones[0].ReadyUs)
	checkClonesAnswer(t, rep2, port, want)

	// The name is the cluster's: taken on both nodes.
	for _, d := range []*testDaemon{a, b} {
		r := d.cli("template", "create", "web", "--job", "svc")
		if r.code != 3 || !strings.Contains(r.stderr, "template exists") {
			t.Fatalf("creating a taken name was not refused: %s", r)
		}
	}
	// Removed on b: gone for a, whose clones are refused with the reason.
	b.ok("template", "rm", "web")
	if ts := listTemplates(t, a); len(ts) != 0 {
		t.Fatalf("template ls on a after rm on b: %+v", ts)
	}
	r := a.cli("run", "--from-template", "web")
	if r.code != 3 || !strings.Contains(r.stderr, "no such template") || !strings.Contains(r.stderr, "cedana_templates") {
		t.Fatalf("clone of a removed template: %s; want a refusal naming the store", r)
	}
	// The running clones go on.
	checkClonesAnswer(t, rep, port, want)
}

// TestTemplateSharedS3: two standalone daemons with storage.backend s3
// on one bucket (versitygw). A template made by a is cloned by b. A
// damaged template object is refused (exit 4, naming the store) before
// any clone starts; restored, it clones. With the store down, b names it
// in the error.
func TestTemplateSharedS3(t *testing.T) {
	python := requireTemplates(t)
	s := startS3(t, itBucket)
	cfg := map[string]any{"storage": map[string]any{"backend": "s3",
		"s3": map[string]any{"endpoint": "http://" + s.addr, "bucket": itBucket, "region": "us-east-1",
			"prefix": "cedana", "path_style": true}}}
	a := startDaemon(t, daemonOpts{Env: s.s3Env()[:2], Config: cfg})
	b := startDaemon(t, daemonOpts{Env: s.s3Env()[:2], Config: cfg})
	killClonesAtEnd(t, a)
	killClonesAtEnd(t, b)
	port := freePort(t)
	a.runJob("svc", []string{"--pid-namespace"}, slowService(t, python, port, 1, 0)...)
	want := waitAnswer(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/", 60*time.Second)
	a.ok("template", "create", "web", "--job", "svc")
	ts := listTemplates(t, b)
	prefix := "s3://" + itBucket + "/cedana/templates/web/"
	if len(ts) != 1 || !strings.HasPrefix(ts[0].Location, prefix) {
		t.Fatalf("template ls on b: %+v; want web in %s", ts, prefix)
	}
	obj := filepath.Join(s.data, itBucket, strings.TrimPrefix(ts[0].Location, "s3://"+itBucket+"/"))
	good, err := os.ReadFile(obj)
	if err != nil {
		t.Fatalf("the template's object in the bucket: %v", err)
	}

	// Damage one byte in the middle (the memory pages): refused on b,
	// which has not unpacked it yet, before any clone starts.
	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(obj, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	r := b.cli("run", "--from-template", "web", "--name", "broken")
	if r.code != 4 || !strings.Contains(r.stderr, prefix) || !strings.Contains(r.stderr, "corrupt") {
		t.Fatalf("clone of a damaged template: %s; want exit 4 naming the object and the damage", r)
	}
	for _, j := range b.jobs() {
		if strings.HasPrefix(j.Name, "broken") {
			t.Fatalf("a clone job exists after the refusal: %+v", j)
		}
	}
	// Repaired: b clones it, and the clone answers with the state.
	if err := os.WriteFile(obj, good, 0o600); err != nil {
		t.Fatal(err)
	}
	rep := startClones(t, b, "--from-template", "web", "--ready", "http:/")
	checkClonesAnswer(t, rep, port, want)
	if z := archivesUnder(b.stateDir); len(z) > 0 {
		t.Fatalf("cloning copied the archive to b's disk: %v", z)
	}

	// The store goes away: b says which store it cannot reach.
	s.stop()
	for _, args := range [][]string{{"run", "--from-template", "web", "--name", "down"}, {"template", "ls"}} {
		r := b.cli(args...)
		if r.code == 0 || !strings.Contains(r.stderr, "s3://"+itBucket) {
			t.Fatalf("%v with the store down: %s; want a failure naming the store", args, r)
		}
		noSecret(t, r)
	}
	checkClonesAnswer(t, rep, port, want)
}

// TestTemplateSharedNATSCluster: the same across three real nats-server
// processes (the template store replicated, R3). After the template is
// made, the server node a is connected to is killed: node b still lists
// and clones it, and the clone answers with the template's state.
func TestTemplateSharedNATSCluster(t *testing.T) {
	python := requireTemplates(t)
	nc := startNATSCluster(t, "127.0.0.1")
	// A longer node timeout than the harness's 3 s: this test is not
	// about failover, and a lease missed on a loaded machine would let
	// the fencer stop the service mid-dump.
	cl := func() map[string]any { return map[string]any{"nats_urls": nc.url(), "node_timeout": "15s"} }
	a := startNode(t, "a", cl(), nil)
	b := startNode(t, "b", cl(), nil)
	waitNodes(t, a, 2)
	killClonesAtEnd(t, a)
	killClonesAtEnd(t, b)
	port := freePort(t)
	a.runJob("svc", []string{"--pid-namespace"}, slowService(t, python, port, 1, 0)...)
	want := waitAnswer(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/", 60*time.Second)
	a.ok("template", "create", "web", "--job", "svc")

	victim := nc.connectedTo(a.pid())
	if victim < 0 {
		victim = 0
	}
	nc.kill(victim)
	t.Logf("killed nats-server n%d (node a's)", victim)
	killed := time.Now()
	var ts []templateInfo
	var lr result
	defer func() {
		if t.Failed() {
			t.Logf("last template ls on b: %s", lr)
		}
	}()
	eventually(t, 120*time.Second, "node b to list the template with a server down", func() bool {
		lr = b.cli("template", "ls", "-o", "json")
		return lr.code == 0 && json.Unmarshal([]byte(lr.stdout), &ts) == nil && len(ts) == 1
	})
	t.Logf("node b listed the template %v after the server was killed", time.Since(killed).Round(time.Millisecond))
	if ts[0].Name != "web" || ts[0].Node != "a" {
		t.Fatalf("template ls on b: %+v", ts)
	}
	// Reads may fail while the store's stream elects a new leader (a few
	// seconds); then the clone must work.
	var r result
	start := time.Now()
	eventually(t, 45*time.Second, "node b to clone the template with a server down", func() bool {
		r = b.cli("run", "-o", "json", "--from-template", "web", "--ready", "http:/")
		if r.code != 0 && !strings.Contains(r.stderr, "unreachable") {
			t.Fatalf("clone on b with a server down: %s", r)
		}
		return r.code == 0
	})
	t.Logf("node b cloned %v after the server was killed", time.Since(start).Round(time.Millisecond))
	var rep cloneReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || len(rep.Clones) != 1 {
		t.Fatalf("run -o json: %v\n%s", err, r.stdout)
	}
	b.track(rep.Clones[0].Job.PID)
	checkClonesAnswer(t, rep, port, want)
}

// TestTemplateRemovedWhileFetched: node b starts cloning a 256 MiB
// template it has not cached yet while node a removes it. Whatever the
// interleaving, b never starts a clone from a partial archive: either
// its fetch completed first and the clone answers with the template's
// state, or the clone is refused with the reason and nothing of it runs
// or stays in b's cache.
func TestTemplateRemovedWhileFetched(t *testing.T) {
	python := requireTemplates(t)
	nodes, _ := embeddedCluster(t, "a", "b")
	a, b := nodes[0], nodes[1]
	killClonesAtEnd(t, a)
	killClonesAtEnd(t, b)
	port := freePort(t)
	a.runJob("svc", []string{"--pid-namespace"}, slowService(t, python, port, 0.2, 256)...)
	want := waitAnswer(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/", 60*time.Second)
	a.ok("template", "create", "big", "--job", "svc")

	done := make(chan result, 1)
	go func() { done <- b.cli("run", "-o", "json", "--from-template", "big", "--ready", "http:/") }()
	time.Sleep(300 * time.Millisecond) // b is fetching
	rm := a.cli("template", "rm", "big")
	r := <-done
	t.Logf("rm on a: exit %d; clone on b: exit %d %s", rm.code, r.code, strings.TrimSpace(r.stderr))
	if rm.code != 0 {
		t.Fatalf("template rm on a: %s", rm)
	}
	if r.code == 0 {
		var rep cloneReport
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || len(rep.Clones) != 1 {
			t.Fatalf("run -o json: %v\n%s", err, r.stdout)
		}
		b.track(rep.Clones[0].Job.PID)
		checkClonesAnswer(t, rep, port, want)
		return
	}
	if r.code != 3 || !strings.Contains(r.stderr, "big was removed") || !strings.Contains(r.stderr, "cedana_templates") {
		t.Fatalf("the refused clone does not say that the template was removed, from which store: %s", r)
	}
	for _, j := range b.jobs() {
		if strings.HasPrefix(j.Name, "big-") {
			t.Fatalf("a clone job exists after the refusal: %+v", j)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(b.stateDir, "templates", ".cache"))
	for _, e := range ents {
		t.Errorf("b's cache kept %s after the refused fetch", e.Name())
	}
}
