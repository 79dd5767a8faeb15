package integration

// The pool of network namespaces (templates.netns_pool): made once a
// template that listens exists, taken by clones (which answer at their
// addresses), never handed out twice, refilled after a run, removed with
// the clone that used it, swept after a daemon killed with SIGKILL, and
// removed when the daemon stops.

import (
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// poolNamespaces lists the daemon's pool namespaces in /run/netns. They
// are named cedana-p<KEY>-<N>, KEY the FNV-1a hash of its template
// directory (internal/template/netpool.go), so that the test sees only
// this daemon's among those of other tests and daemons.
func poolNamespaces(t *testing.T, d *testDaemon) []string {
	t.Helper()
	h := fnv.New32a()
	h.Write([]byte(filepath.Join(d.stateDir, "templates")))
	prefix := fmt.Sprintf("cedana-p%08x-", h.Sum32())
	es, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// netnsOf names the namespace in /run/netns that process pid runs in
// ("" if none).
func netnsOf(t *testing.T, pid int) string {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &want); err != nil {
		t.Fatalf("PID %d: %v", pid, err)
	}
	es, _ := os.ReadDir("/run/netns")
	for _, e := range es {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/run/netns", e.Name()), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			return e.Name()
		}
	}
	return ""
}

func TestTemplateNetnsPool(t *testing.T) {
	python := requireTemplates(t)
	const size = 3
	d := startDaemon(t, daemonOpts{Config: map[string]any{"templates": map[string]any{"netns_pool": size}}})
	killClonesAtEnd(t, d)
	port := freePort(t)
	d.runJob("svc", []string{"--pid-namespace"}, slowService(t, python, port, 0.2, 0)...)
	want := waitAnswer(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/", 60*time.Second)
	if got := poolNamespaces(t, d); len(got) != 0 {
		t.Fatalf("namespaces made before any template listened: %v", got)
	}

	// A template that listens fills the pool.
	d.ok("template", "create", "web", "--job", "svc")
	var pool []string
	eventually(t, 10*time.Second, "the pool to fill", func() bool {
		pool = poolNamespaces(t, d)
		return len(pool) == size
	})

	// Clones take pooled namespaces, each its own, and answer there.
	rep := startClones(t, d, "--from-template", "web", "--count", "2", "--ready", "http:/")
	handed := map[string]string{} // namespace → clone
	for _, c := range rep.Clones {
		ns := netnsOf(t, c.Job.PID)
		if !slices.Contains(pool, ns) {
			t.Fatalf("clone %s runs in namespace %q, not one of the pool's %v", c.Job.Name, ns, pool)
		}
		if other, ok := handed[ns]; ok {
			t.Fatalf("clones %s and %s share namespace %s", other, c.Job.Name, ns)
		}
		handed[ns] = c.Job.Name
		if got := getBody("http://"+hostPort(c.Job.Address, port)+"/", 5*time.Second); got != want {
			t.Fatalf("clone %s at %s answered %q, want %q", c.Job.Name, c.Job.Address, got, want)
		}
	}
	// The pool fills up again with new namespaces.
	eventually(t, 10*time.Second, "the pool to fill again", func() bool {
		return len(poolNamespaces(t, d)) == size+len(handed)
	})

	// A clone that ends takes its namespace along; the next clone gets
	// another one.
	victim := rep.Clones[0]
	victimNS := netnsOf(t, victim.Job.PID)
	if err := syscall.Kill(victim.Job.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.waitJob(victim.Job.Name, 10*time.Second, "dead", func(j jobInfo) bool { return j.State != "running" })
	eventually(t, 5*time.Second, "the dead clone's namespace to be removed", func() bool {
		_, err := os.Stat("/run/netns/" + victimNS)
		return os.IsNotExist(err)
	})
	again := startClones(t, d, "--from-template", "web", "--name", "again", "--ready", "http:/")
	ns := netnsOf(t, again.Clones[0].Job.PID)
	if ns == victimNS || handed[ns] != "" || !strings.HasPrefix(ns, "cedana-p") {
		t.Fatalf("the new clone runs in %q (the dead clone's was %s; handed out: %v)", ns, victimNS, handed)
	}
	handed[ns] = again.Clones[0].Job.Name
	delete(handed, victimNS)
	eventually(t, 10*time.Second, "the pool to fill again", func() bool {
		return len(poolNamespaces(t, d)) == size+len(handed)
	})

	// A daemon killed with SIGKILL leaves its pool behind; the next one
	// removes it, and keeps the namespaces of the clones that still run.
	d.crash()
	if got := poolNamespaces(t, d); len(got) != size+len(handed) {
		t.Fatalf("after SIGKILL: %v", got)
	}
	d.launch()
	d.waitReady()
	var left []string
	eventually(t, 5*time.Second, "the leftover pool to be removed", func() bool {
		left = poolNamespaces(t, d)
		return len(left) == len(handed)
	})
	for _, ns := range left {
		if handed[ns] == "" {
			t.Fatalf("after the restart, pool namespace %s is still there (clones use %v)", ns, handed)
		}
	}
	for _, c := range []string{rep.Clones[1].Job.Address, again.Clones[0].Job.Address} {
		if got := getBody("http://"+hostPort(c, port)+"/", 5*time.Second); got != want {
			t.Fatalf("after the restart, the clone at %s answered %q", c, got)
		}
	}

	// Stopping the daemon removes the pool; the clones' namespaces go
	// with the clones.
	// The pool was empty: this clone makes its own namespace, then the
	// pool fills.
	d.ok("run", "--from-template", "web", "--name", "third")
	eventually(t, 10*time.Second, "the pool to fill after the restart", func() bool {
		return len(poolNamespaces(t, d)) == size+len(handed)
	})
	for _, j := range d.jobs() {
		if strings.HasPrefix(j.Name, "web-") || strings.HasPrefix(j.Name, "again-") || strings.HasPrefix(j.Name, "third-") {
			if j.State == "running" {
				d.ok("kill", j.Name)
			}
		}
	}
	eventually(t, 10*time.Second, "the clones' namespaces to be removed", func() bool {
		return len(poolNamespaces(t, d)) == size
	})
	d.stop()
	if got := poolNamespaces(t, d); len(got) != 0 {
		t.Fatalf("after the daemon stopped: %v", got)
	}
}
