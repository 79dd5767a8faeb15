package integration

// A runc container job migrates between two nodes on this machine: the
// source checkpoints it keeping it stopped, the target restores it as a
// new runc container (<id>-<node>, its own runc root, cgroup and
// writable layer), left stopped until the job is handed over, and the
// source then removes its stopped copy. A target whose restore fails
// (its runc has the ID taken; the bundle's rootfs is missing) leaves the
// job running on the source, resumed, not restarted. A drain moves it
// the same way.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runcCluster starts nodes a (embedded NATS) and b, each with a runc
// root of its own, and returns them with their roots.
func runcCluster(t *testing.T) ([2]*testDaemon, [2]string) {
	t.Helper()
	port := freePort(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	token := "tok-" + fmt.Sprint(time.Now().UnixNano())
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var ds [2]*testDaemon
	var roots [2]string
	for i, name := range []string{"a", "b"} {
		root, err := os.MkdirTemp("/tmp", "crr") // runc's sockets: a short path
		if err != nil {
			t.Fatal(err)
		}
		roots[i] = root
		cl := map[string]any{"nats_urls": fmt.Sprintf("nats://%s@127.0.0.1:%d", token, port)}
		if i == 0 {
			cl = map[string]any{"nats_listen": fmt.Sprintf("127.0.0.1:%d", port), "nats_token_file": tokenFile}
		}
		d := startNode(t, name, cl, map[string]any{"runc_root": root})
		ds[i] = d
		t.Cleanup(func() { // every container of this root, by ID
			out, _ := exec.Command("runc", "--root", root, "list", "-q").Output()
			for _, id := range strings.Fields(string(out)) {
				_ = exec.Command("runc", "--root", root, "kill", id, "KILL").Run()
				_ = exec.Command("runc", "--root", root, "delete", "-f", id).Run()
			}
			unmountUnder(d.stateDir)
			os.RemoveAll(root)
		})
	}
	waitNodes(t, ds[0], 2)
	return ds, roots
}

// runcIDs lists the containers of a runc root.
func runcIDs(t *testing.T, root string) []string {
	t.Helper()
	out, err := exec.Command("runc", "--root", root, "list", "-q").Output()
	if err != nil {
		t.Fatalf("runc --root %s list: %v", root, err)
	}
	return strings.Fields(string(out))
}

func TestClusterRuncContainerMigrate(t *testing.T) {
	requireContainers(t)
	requireBinary(t, "runc")
	rootfs := busyboxRootfs(t)
	ds, roots := runcCluster(t)
	a, b := ds[0], ds[1]
	// The counter also appends each value to a file on a bind mount of
	// the host, which both nodes see: two copies running at once, or a
	// source that ran on after its checkpoint, would write a value twice.
	shared := t.TempDir()
	bundle := makeBundle(t, rootfs, "sh", "-c", loggedCounterCmd)
	bindMount(t, bundle, shared, "/data")
	if r := a.cli("run", "runc", "--runc-root", roots[0], "--bundle", bundle, "--id", "mig"); r.code != 0 {
		t.Fatalf("run runc: %s", r)
	}
	a.ok("manage", "runc", "mig", "--name", "ctr")
	src := a.job("ctr")
	a.track(src.PID)
	waitCounter(t, countFile(src.PID), 5)

	// The target's restore fails: node b's runc already has a container
	// with the ID the job's container gets there. The migration fails
	// saying why; the job runs on a as the same, resumed process.
	other := makeBundle(t, rootfs, "sleep", "1000")
	busy := exec.Command("runc", "--root", roots[1], "run", "-d", "--bundle", other, "mig-b")
	if err := busy.Run(); err != nil { // stdio on /dev/null: the container keeps it
		t.Fatalf("start the container that takes b's ID: %v", err)
	}
	r := a.cli("migrate", "ctr", "--to", "b")
	if r.code == 0 || !strings.Contains(r.stderr, "mig-b") || !strings.Contains(r.stderr, "already exists on this node") {
		t.Fatalf("migrate to a node whose restore fails: %s; want a non-zero exit saying the container ID is taken there", r)
	}
	t.Logf("refused: %s", strings.TrimSpace(r.stderr))
	j, ok := findJob(clusterJobs(t, a), "ctr")
	if !ok || j.Node != "a" || j.State != "running" || j.PID != src.PID {
		t.Fatalf("after the failed migration: %+v; want job ctr running on a as the same PID %d", j, src.PID)
	}
	if st := procState(src.PID); st == 'T' || st == 't' {
		t.Fatalf("the source container (PID %d) stayed stopped after the failed migration", src.PID)
	}
	checkContinues(t, countFile(src.PID), readCounter(countFile(src.PID)))
	if ids := runcIDs(t, roots[1]); len(ids) != 1 || ids[0] != "mig-b" {
		t.Fatalf("runc on b after the failed migration: %v; want only the container that was there", ids)
	}
	if js := clusterJobs(t, b, "--node", "b"); len(js) != 0 {
		t.Fatalf("ps --node b after the failed migration: %+v; want nothing", js)
	}
	if out, err := exec.Command("runc", "--root", roots[1], "delete", "-f", "mig-b").CombinedOutput(); err != nil {
		t.Fatalf("runc delete mig-b: %v\n%s", err, out)
	}

	// The bundle's rootfs is missing where the target looks for it (moved
	// away; the source's overlay keeps its own reference to it): the
	// target's restore fails saying so, the job runs on at a.
	hidden := rootfs + ".away"
	if err := os.Rename(rootfs, hidden); err != nil {
		t.Fatal(err)
	}
	r = a.cli("migrate", "ctr", "--to", "b")
	if err := os.Rename(hidden, rootfs); err != nil {
		t.Fatal(err)
	}
	if r.code == 0 || !strings.Contains(r.stderr, "base rootfs") || !strings.Contains(r.stderr, "missing on this node") {
		t.Fatalf("migrate to a node without the bundle's rootfs: %s; want a non-zero exit saying the rootfs is missing", r)
	}
	t.Logf("refused: %s", strings.TrimSpace(r.stderr))
	if j, ok := findJob(clusterJobs(t, a), "ctr"); !ok || j.Node != "a" || j.State != "running" || j.PID != src.PID {
		t.Fatalf("after the second failed migration: %+v; want job ctr running on a as the same PID %d", j, src.PID)
	}
	checkContinues(t, countFile(src.PID), readCounter(countFile(src.PID)))
	if ids := runcIDs(t, roots[1]); len(ids) != 0 {
		t.Fatalf("runc on b after the failed migration: %v; want nothing", ids)
	}

	// Now it moves: its counter continues on b from where it was.
	before := readCounter(countFile(src.PID))
	m := migrate(t, a, "ctr", "b")
	if m.From != "a" || m.To != "b" {
		t.Fatalf("migrate said %+v", m)
	}
	moved, ok := findJob(clusterJobs(t, a), "ctr")
	if !ok || moved.Node != "b" || moved.State != "running" || moved.ID != src.ID {
		t.Fatalf("after the migration ps says %+v; want job %s running on b", moved, src.ID)
	}
	b.track(moved.PID)
	checkContinues(t, countFile(moved.PID), before)
	if ids := runcIDs(t, roots[1]); len(ids) != 1 || ids[0] != "mig-b" {
		t.Fatalf("runc on b: %v; want the job's container as mig-b", ids)
	}
	if ids := runcIDs(t, roots[0]); len(ids) != 0 {
		t.Fatalf("runc on a after the migration: %v; want the source container gone", ids)
	}
	waitGone(t, src.PID, 10*time.Second)
	if _, err := os.Stat(filepath.Join(a.stateDir, "runc", "mig")); !os.IsNotExist(err) {
		t.Errorf("the source container's writable layer is still in %s (err %v)", filepath.Join(a.stateDir, "runc", "mig"), err)
	}
	if js := clusterJobs(t, a, "--node", "a"); len(js) != 0 {
		t.Fatalf("ps --node a after the migration: %+v; want nothing", js)
	}
	if ev := b.ok("events", "ctr").stdout; !strings.Contains(ev, "adopted") || !strings.Contains(ev, "migrated-in") {
		t.Errorf("events on b lack the job's history from a:\n%s", ev)
	}

	// And back to a: the container becomes mig-a there, from b's state.
	before = readCounter(countFile(moved.PID))
	migrate(t, b, "ctr", "a")
	back, ok := findJob(clusterJobs(t, a), "ctr")
	if !ok || back.Node != "a" || back.State != "running" {
		t.Fatalf("after the migration back ps says %+v; want job ctr running on a", back)
	}
	a.track(back.PID)
	checkContinues(t, countFile(back.PID), before)
	if ids := runcIDs(t, roots[0]); len(ids) != 1 || ids[0] != "mig-a" {
		t.Fatalf("runc on a: %v; want the job's container as mig-a", ids)
	}
	if ids := runcIDs(t, roots[1]); len(ids) != 0 {
		t.Fatalf("runc on b after the migration back: %v; want nothing", ids)
	}

	// A drain of a moves it too (to b, the only other node), as mig-b.
	before = readCounter(countFile(back.PID))
	b.ok("node", "drain", "a", "-o", "json")
	drained, ok := findJob(clusterJobs(t, b), "ctr")
	if !ok || drained.Node != "b" || drained.State != "running" {
		t.Fatalf("after node drain a ps says %+v; want job ctr running on b", drained)
	}
	b.track(drained.PID)
	checkContinues(t, countFile(drained.PID), before)
	if ids := runcIDs(t, roots[1]); len(ids) != 1 || ids[0] != "mig-b" {
		t.Fatalf("runc on b after the drain: %v; want the job's container as mig-b", ids)
	}
	if ids := runcIDs(t, roots[0]); len(ids) != 0 {
		t.Fatalf("runc on a after the drain: %v; want nothing", ids)
	}
	b.ok("kill", "ctr")
	checkLog(t, filepath.Join(shared, "log"))
}

// loggedCounterCmd is counterCmd that also appends each value to
// /data/log.
const loggedCounterCmd = `i=0; while :; do echo $i > /count.tmp; mv -f /count.tmp /count; echo $i >> /data/log; i=$((i+1)); sleep 0.05; done`

// bindMount adds a read-write bind mount of host directory src at dst to
// the bundle's configuration.
func bindMount(t *testing.T, bundle, src, dst string) {
	t.Helper()
	editSpec(t, bundle, func(spec map[string]any) {
		mounts, _ := spec["mounts"].([]any)
		spec["mounts"] = append(mounts, map[string]any{"destination": dst, "type": "bind", "source": src,
			"options": []string{"rbind", "rw"}})
	})
}

// checkLog asserts that the counter's log holds 0, 1, 2… each once, in
// order: one copy ran at every moment, and none went back.
func checkLog(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(data))
	for i, l := range lines {
		if l != strconv.Itoa(i) {
			t.Fatalf("the counter's log has %q at line %d, want %d (two copies ran, or one went back): ...%v", l, i, i, lines[max(0, i-5):min(len(lines), i+5)])
		}
	}
	if len(lines) < 20 {
		t.Fatalf("the counter's log has only %d values", len(lines))
	}
	t.Logf("the counter's log: %d values, each once, in order", len(lines))
}
