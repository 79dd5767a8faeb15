package integration

// A runc container as a template: a counter container managed by the
// daemon is made a template (it keeps running); each clone is a new
// runc container whose counter continues from the template's state, not
// from zero, with its own writable layer.

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestTemplateRuncContainer runs with templates under the state
// directory, and in a shared directory (storage.backend dir): there the
// clones' node fetches the archive into its cache first.
func TestTemplateRuncContainer(t *testing.T) {
	requireContainers(t)
	requireBinary(t, "runc")
	rootfs := busyboxRootfs(t)
	t.Run("Local", func(t *testing.T) { runcTemplate(t, rootfs, nil) })
	t.Run("SharedDir", func(t *testing.T) {
		runcTemplate(t, rootfs, map[string]any{"storage": map[string]any{"backend": "dir", "dir": map[string]any{"path": t.TempDir()}}})
	})
}

func runcTemplate(t *testing.T, rootfs string, cfg map[string]any) {
	runcRoot, err := os.MkdirTemp("/tmp", "crr") // runc's sockets: a short path
	if err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, daemonOpts{Daemon: map[string]any{"runc_root": runcRoot}, Config: cfg})
	t.Cleanup(func() { // after the daemon stops: every container of this root, by ID
		out, _ := exec.Command("runc", "--root", runcRoot, "list", "-q").Output()
		for _, id := range strings.Fields(string(out)) {
			_ = exec.Command("runc", "--root", runcRoot, "kill", id, "KILL").Run()
			_ = exec.Command("runc", "--root", runcRoot, "delete", "-f", id).Run()
		}
		unmountUnder(d.stateDir)
		os.RemoveAll(runcRoot)
	})
	bundle := makeBundle(t, rootfs, "sh", "-c", counterCmd)
	// Started with the daemon's state directory (its writable layer lives
	// there), then adopted by the daemon.
	if r := d.cli("run", "runc", "--runc-root", runcRoot, "--bundle", bundle, "--id", "tplsrc"); r.code != 0 {
		t.Fatalf("run runc: %s", r)
	}
	d.ok("manage", "runc", "tplsrc", "--name", "src")
	src := d.job("src")
	d.track(src.PID)
	before := waitCounter(t, countFile(src.PID), 5)

	d.ok("template", "create", "ctr", "--job", "src")
	ts := listTemplates(t, d)
	if len(ts) != 1 || ts[0].Name != "ctr" || (cfg != nil) == strings.HasPrefix(ts[0].Location, d.stateDir) {
		t.Fatalf("template ls: %+v", ts)
	}
	after := d.waitJob("src", 10*time.Second, "running after the template was made", func(j jobInfo) bool { return j.State == "running" })
	d.track(after.PID)
	checkContinues(t, countFile(after.PID), before) // the source goes on

	rep := startClones(t, d, "--from-template", "ctr", "--count", "2")
	if len(rep.Clones) != 2 {
		t.Fatalf("want 2 clones: %+v", rep)
	}
	pids := map[int]bool{after.PID: true}
	for _, c := range rep.Clones {
		if c.Job.State != "running" || c.Job.PID <= 0 || pids[c.Job.PID] {
			t.Fatalf("clone %s: %+v", c.Job.Name, c.Job)
		}
		pids[c.Job.PID] = true
		// The template's state: from where it was, not from zero.
		checkContinues(t, countFile(c.Job.PID), before)
	}
	// A new container each, with a writable layer of its own.
	out, err := exec.Command("runc", "--root", runcRoot, "list", "-q").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Clones {
		if !strings.Contains(" "+strings.Join(strings.Fields(string(out)), " ")+" ", " "+c.Job.Name+" ") {
			t.Fatalf("clone %s is not a runc container of its own: runc list says %q", c.Job.Name, out)
		}
	}
	if err := os.WriteFile("/proc/"+itoa(rep.Clones[0].Job.PID)+"/root/mine", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/proc/" + itoa(rep.Clones[1].Job.PID) + "/root/mine"); err == nil {
		t.Fatal("two clones share one writable layer")
	}
	// Process-only options are refused with the reason.
	if r := d.cli("run", "--from-template", "ctr", "--lazy"); r.code != 3 || !strings.Contains(r.stderr, "process templates only") {
		t.Fatalf("--lazy on a container template: %s", r)
	}
	for _, c := range rep.Clones {
		d.ok("kill", c.Job.Name)
	}
}
