package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDaemonRm: rm refuses a running job without -f, frees the job's
// name, keeps its archives unless --checkpoints, and removes its cgroup.
func TestDaemonRm(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	j, _, marker := markedCounter(t, d, "web")
	c := d.dumpJob("web", "--leave-running")
	if r := d.cli("rm", "web"); r.code == 0 || !strings.Contains(r.stderr, "-f") {
		t.Fatalf("rm of a running job: %s; want a refusal that mentions -f", r)
	}
	r := d.ok("rm", "-f", "web")
	if !strings.Contains(r.stdout, "kept "+c.Path) {
		t.Errorf("rm -f does not list the kept archive %s:\n%s", c.Path, r.stdout)
	}
	waitGone(t, j.PID, 5*time.Second)
	if n := copies(marker); len(n) != 0 {
		t.Errorf("rm -f left the job running: %v", n)
	}
	if _, err := os.Stat(c.Path); err != nil {
		t.Errorf("rm without --checkpoints deleted the archive: %v", err)
	}
	if dir := jobCgroupDir(j.ID); dir != "" {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("rm left the job's cgroup %s", dir)
		}
	}
	for _, js := range d.jobs() {
		if js.Name == "web" {
			t.Fatalf("ps still lists web after rm: %+v", js)
		}
	}
	// The name is free; a killed job goes without -f, with its archives.
	j2, _, _ := markedCounter(t, d, "web")
	c2 := d.dumpJob("web")
	waitGone(t, j2.PID, 5*time.Second)
	d.ok("rm", "--checkpoints", "web")
	if _, err := os.Stat(c2.Path); !os.IsNotExist(err) {
		t.Errorf("rm --checkpoints left %s: %v", c2.Path, err)
	}
	if r := d.cli("rm", "web"); r.code == 0 {
		t.Errorf("rm of a removed job succeeded: %s", r)
	}
}

// TestDaemonRunResolvesOnClient: `cedana run` finds the program with the
// client's PATH and working directory, not the daemon's, and the job gets
// none of the client's CEDANA_* variables and GODEBUG=multipathtcp=0.
func TestDaemonRunResolvesOnClient(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	bin := t.TempDir()
	script := "#!/bin/sh\necho \"GODEBUG=$GODEBUG\"\nenv | grep CEDANA_ || echo no-cedana-vars\necho \"cwd=$(pwd)\"\nexec sleep 1000\n"
	if err := os.WriteFile(filepath.Join(bin, "only-on-client-path"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	if err := os.WriteFile(filepath.Join(work, "local.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, prog string }{{"onpath", "only-on-client-path"}, {"relative", "./local.sh"}} {
		cmd := exec.Command(cedanaBin, "run", "--name", tc.name, "--", tc.prog)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "HOME="+d.env.home, "PATH="+bin+":"+os.Getenv("PATH"),
			"CEDANA_TOKEN=s3cret-token", "CEDANA_OTHER=s3cret-other")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("cedana run %s from %s: %v\n%s", tc.prog, work, err, out.String())
		}
		j := d.job(tc.name)
		d.track(j.PID)
		var log string
		eventually(t, 5*time.Second, "the job's output", func() bool {
			log = d.ok("logs", tc.name).stdout
			return strings.Contains(log, "cwd=")
		})
		for _, want := range []string{"GODEBUG=multipathtcp=0", "no-cedana-vars", "cwd=" + work} {
			if !strings.Contains(log, want) {
				t.Errorf("%s: the job's output lacks %q:\n%s", tc.name, want, log)
			}
		}
		if strings.Contains(log, "s3cret") {
			t.Errorf("%s: a CEDANA_* secret reached the job:\n%s", tc.name, log)
		}
		env, _ := os.ReadFile("/proc/" + itoa(j.PID) + "/environ")
		if bytes.Contains(env, []byte("s3cret")) {
			t.Errorf("%s: a CEDANA_* secret is in the job's environment", tc.name)
		}
	}
}

// TestDaemonLogsAdopted: logs of an adopted process follow its stdout
// when that is a file, and otherwise say that cedana keeps no log.
func TestDaemonLogsAdopted(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	out := filepath.Join(t.TempDir(), "out.log")
	toFile := start(t, "bash", "-c", "exec >"+out+"; while :; do echo adopted-says-hi; sleep 0.1; done").cmd.Process.Pid
	toNull := start(t, "sleep", "1000").cmd.Process.Pid
	d.ok("manage", "--name", "tofile", itoa(toFile))
	d.ok("manage", "--name", "tonull", itoa(toNull))
	eventually(t, 5*time.Second, "the adopted process's output in logs", func() bool {
		return strings.Contains(d.cli("logs", "tofile").stdout, "adopted-says-hi")
	})
	r := d.cli("logs", "tonull")
	if r.code == 0 || !strings.Contains(r.stderr, "adopted") || !strings.Contains(r.stderr, "no log") {
		t.Errorf("logs of an adopted process writing to /dev/null: %s; want an error saying cedana keeps no log", r)
	}
}

// TestDaemonPIDNamespaceJob: a job in its own PID namespace (and its own
// cgroup) is dumped and restored twice — no PID clash — and the restored
// tree is back in the job's cgroup.
func TestDaemonPIDNamespaceJob(t *testing.T) {
	d := startDaemon(t, daemonOpts{})
	j, ctr, marker := markedCounter(t, d, "ns", "--pid-namespace")
	for i := 0; i < 2; i++ {
		before := readCounter(ctr)
		d.dumpJob("ns")
		waitGone(t, d.job("ns").PID, 5*time.Second)
		d.restoreJob("ns")
		checkContinues(t, ctr, before)
		exactlyOne(t, d, j, marker)
	}
}
