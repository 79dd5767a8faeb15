package daemon

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cedana/cedana/internal/cluster"
)

// TestChoose: a node named is taken when ready and refused, with the
// reason, when draining, down or unknown; "auto" takes the ready node
// Rank puts first and says why, and says so when no node is ready.
func TestChoose(t *testing.T) {
	now := time.Now()
	nodes := []cluster.NodeInfo{
		{Name: "a", State: cluster.StateReady, Heartbeat: now, Capacity: cluster.Capacity{RunningJobs: 2, FreeMemory: 8 << 30}},
		{Name: "b", State: cluster.StateReady, Heartbeat: now, Capacity: cluster.Capacity{RunningJobs: 1, FreeMemory: 1 << 30}},
		{Name: "c", State: cluster.StateDraining, Heartbeat: now},
		{Name: "d", State: cluster.StateDown, Heartbeat: now.Add(-time.Minute)},
	}
	for _, tc := range []struct {
		want, node, why string
		code            codes.Code
		msg             string
	}{
		{want: "a", node: "a", why: "asked for (--node a)"},
		{want: "auto", node: "b", why: "auto: first of 2 ready nodes (ready, 1 running jobs, 1024 MiB free)"},
		{want: "c", code: codes.FailedPrecondition, msg: "node c is draining"},
		{want: "d", code: codes.FailedPrecondition, msg: "node d is down"},
		{want: "x", code: codes.NotFound, msg: `no node "x" in the cluster (nodes: a: ready, b: ready, c: draining, d: down)`},
	} {
		n, why, err := choose(nodes, tc.want)
		if tc.msg != "" {
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("choose(%s): %v; want %v %q", tc.want, err, tc.code, tc.msg)
			}
			continue
		}
		if err != nil || n.Name != tc.node || why != tc.why {
			t.Errorf("choose(%s) = %s, %q, %v; want %s, %q", tc.want, n.Name, why, err, tc.node, tc.why)
		}
	}
	_, _, err := choose(nodes[2:], "auto")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no ready node") {
		t.Errorf("auto without a ready node: %v", err)
	}
}

// TestPlacementsSpread: jobs placed since a node's last heartbeat count
// as its running jobs, so that placements faster than heartbeats spread
// over the nodes; a later heartbeat (which counts them itself) and time
// end that.
func TestPlacementsSpread(t *testing.T) {
	hb := time.Now().Add(-time.Second)
	nodes := []cluster.NodeInfo{
		{Name: "a", State: cluster.StateReady, Heartbeat: hb, Capacity: cluster.Capacity{FreeMemory: 3 << 30}},
		{Name: "b", State: cluster.StateReady, Heartbeat: hb, Capacity: cluster.Capacity{FreeMemory: 2 << 30}},
		{Name: "c", State: cluster.StateReady, Heartbeat: hb, Capacity: cluster.Capacity{FreeMemory: 1 << 30}},
	}
	p := &placements{keep: time.Minute}
	var got []string
	for range 4 {
		n, _, err := choose(p.count(nodes), autoNode)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n.Name)
		p.add(n.Name, time.Now())
	}
	if strings.Join(got, ",") != "a,b,c,a" {
		t.Fatalf("four auto placements with stale heartbeats went to %v; want a,b,c,a", got)
	}
	// Without the memory of placements, all would go to a.
	if n, _, _ := choose(nodes, autoNode); n.Name != "a" {
		t.Fatalf("the test's premise: %s", n.Name)
	}
	// A heartbeat sent after the placements already counts them.
	fresh := append([]cluster.NodeInfo(nil), nodes...)
	fresh[0].Heartbeat, fresh[0].RunningJobs = time.Now().Add(time.Second), 2
	if c := p.count(fresh); c[0].RunningJobs != 2 || c[1].RunningJobs != 1 {
		t.Fatalf("counts with a's fresh heartbeat: a %d, b %d; want 2 and 1", c[0].RunningJobs, c[1].RunningJobs)
	}
	// Forgotten after keep.
	p.keep = time.Nanosecond
	if c := p.count(nodes); c[0].RunningJobs != 0 || len(p.recent) != 0 {
		t.Fatalf("placements older than keep still count: %+v", c[0])
	}
}

// TestDrainMarkSurvivesRestart: the mark is a file in the state
// directory, read again by the next daemon; resume removes it.
func TestDrainMarkSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	d, err := loadDrainMark(dir)
	if err != nil || d.draining() {
		t.Fatalf("fresh state dir: draining %v, %v", d.draining(), err)
	}
	if err := d.set(true); err != nil {
		t.Fatal(err)
	}
	if again, err := loadDrainMark(dir); err != nil || !again.draining() {
		t.Fatalf("after a restart: draining %v, %v; want true", again.draining(), err)
	}
	if err := d.set(false); err != nil {
		t.Fatal(err)
	}
	if again, err := loadDrainMark(dir); err != nil || again.draining() {
		t.Fatalf("after resume and a restart: draining %v, %v; want false", again.draining(), err)
	}
	if (*drainMark)(nil).draining() {
		t.Fatal("a nil mark drains")
	}
}
