package integration

import (
	"encoding/json"
	"testing"
	"time"
)

// TestDaemonManageDocker: a Docker container adopted as a daemon job is
// checkpointed (stopped), removed, and restored through the job: the
// daemon recreates the container from the archive and the counter
// continues; a periodic --leave-running checkpoint keeps it running.
func TestDaemonManageDocker(t *testing.T) {
	requireCRIU(t)
	requireContainers(t, "nsenter")
	lookDockerd(t)
	dk := startDocker(t)
	const image = "cedana-busybox:daemon"
	dk.importBusybox(busyboxRootfs(t), image)
	t.Setenv("DOCKER_HOST", dk.host()) // the daemon's container engine finds it there
	d := startDaemon(t, daemonOpts{})

	id := dk.runContainer("cedana-managed", image, "sh", "-c", counterCmd)
	waitCounter(t, countFile(dk.pid(id)), 5)
	r := d.ok("manage", "docker", "cedana-managed", "-o", "json")
	var j struct {
		jobInfo
		Runtime   string `json:"runtime"`
		Container string `json:"container"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		t.Fatalf("manage docker -o json: %v\n%s", err, r.stdout)
	}
	if j.Runtime != "docker" || j.Container != id || j.State != "running" {
		t.Fatalf("managed job = %+v, want a running docker job of container %s", j, id)
	}
	if r := d.cli("manage", "docker", "cedana-managed"); r.code == 0 {
		t.Errorf("a container managed twice was accepted: %s", r)
	}

	// A checkpoint that leaves it running: the job follows the container's new init.
	d.dumpJob("cedana-managed", "--leave-running")
	running := d.waitJob("cedana-managed", 10*time.Second, "running after --leave-running", func(j jobInfo) bool { return j.State == "running" })
	before := waitCounter(t, countFile(running.PID), 5)

	// A stopping checkpoint, then the container is removed altogether.
	d.dumpJob("cedana-managed")
	dk.waitNotRunning(id)
	dk.remove(id)
	if got := d.job("cedana-managed"); got.State != "checkpointed" {
		t.Fatalf("after dump job the job is %s, want checkpointed", got.State)
	}
	restored := d.restoreJob("cedana-managed")
	var list []struct {
		Container string `json:"container"`
	}
	if err := json.Unmarshal([]byte(d.ok("ps", "-o", "json").stdout), &list); err != nil {
		t.Fatalf("ps -o json: %v", err)
	}
	for _, x := range list {
		if x.Container != "" && x.Container != id {
			dk.track(x.Container) // recreated by the restore: removed at the end
		}
	}
	if restored.State != "running" || restored.PID <= 0 {
		t.Fatalf("restored job = %+v", restored)
	}
	checkContinues(t, countFile(restored.PID), before)

	// A container job that ends has its exit status, from Docker (the
	// daemon is not its init's parent): 0 is exited, anything else failed.
	for _, tc := range []struct {
		name  string
		code  int
		state string
	}{{"cedana-exit0", 0, "exited"}, {"cedana-exit3", 3, "failed"}} {
		dk.runContainer(tc.name, image, "sh", "-c", "sleep 2; exit "+itoa(tc.code))
		d.ok("manage", "docker", tc.name)
		got := d.waitJob(tc.name, 15*time.Second, "ended", func(j jobInfo) bool { return j.State != "running" })
		var withCode struct {
			HasExitCode bool `json:"has_exit_code"`
			ExitCode    *int `json:"exit_code"`
		}
		for _, raw := range psRaw(t, d) {
			if n, _ := raw["name"].(string); n == tc.name {
				b, _ := json.Marshal(raw)
				_ = json.Unmarshal(b, &withCode)
			}
		}
		if got.State != tc.state || !withCode.HasExitCode || withCode.ExitCode == nil || *withCode.ExitCode != tc.code {
			t.Errorf("container %s exiting with %d: job %s, exit_code %v; want %s, %d", tc.name, tc.code, got.State, withCode.ExitCode, tc.state, tc.code)
		}
	}
}

// psRaw returns `ps -o json` as generic objects.
func psRaw(t *testing.T, d *testDaemon) []map[string]any {
	t.Helper()
	var out []map[string]any
	if err := json.Unmarshal([]byte(d.ok("ps", "-o", "json").stdout), &out); err != nil {
		t.Fatal(err)
	}
	return out
}
