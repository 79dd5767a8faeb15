package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"
)

// Periodic checkpoints skip jobs that did not change (internal/jobs/skip.go).

// signalCounterScript is a Python job that sleeps in signal.pause() and
// counts SIGUSR1s into path (write + rename): idle until signalled.
func signalCounterScript(path string) string {
	return fmt.Sprintf(`
import os, signal
n = 0
def h(s, f):
    global n
    n += 1
    with open(%[1]q + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(%[1]q + ".tmp", %[1]q)
signal.signal(signal.SIGUSR1, h)
while True:
    signal.pause()
`, path)
}

// udpScript is a Python job holding a UDP socket bound to port that it
// never reads: it blocks on a pipe of its own. Datagrams sent to it wait
// in the socket's queue, a change made while the job does not run.
func udpScript(port int) string {
	return fmt.Sprintf(`
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", %d))
r, w = os.pipe()
os.read(r, 1)
`, port)
}

// TestDaemonPeriodicSkipUnchanged: with checkpoints every second, an idle
// sleep and a Python process blocked on a pipe read are checkpointed once
// and then skipped; a busy counter is checkpointed every time; a job that
// holds a UDP socket receiving datagrams from outside is not skipped under
// the default policy (safe), but is under skip_unchanged=always; a skipped
// job that is woken by a signal is checkpointed again, and that newest
// checkpoint restores with the signal's effect.
func TestDaemonPeriodicSkipUnchanged(t *testing.T) {
	d := startDaemon(t, daemonOpts{Metrics: true})
	tmp := t.TempDir()
	every := []string{"--checkpoint-every", "1s"}
	d.runJob("idle-sleep", every, "sleep", "3600")
	d.runJob("idle-pipe", every, "python3", "-c", "import os\nr, w = os.pipe()\nos.read(r, 1)")
	d.runJob("busy", every, "bash", "-c", counterScript(filepath.Join(tmp, "busy")))
	sigPath := filepath.Join(tmp, "signals")
	sig := d.runJob("signalled", every, "python3", "-c", signalCounterScript(sigPath))
	portSafe, portAlways := freePort(t), freePort(t)
	d.runJob("udp-safe", every, "python3", "-c", udpScript(portSafe))
	d.runJob("udp-always", append([]string{"--skip-unchanged", "always"}, every...), "python3", "-c", udpScript(portAlways))

	// Datagrams from outside arrive in the UDP jobs' queues all along.
	stop := make(chan struct{})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := 0; ; i++ {
			for _, p := range []int{portSafe, portAlways} {
				if c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
					fmt.Fprintf(c, "datagram %d", i)
					c.Close()
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stop); <-sent }()

	// However slow the machine, by the time the jobs that must not be
	// skipped have 4 checkpoints, the idle ones have been looked at 4
	// times too (they were started first, with the same period).
	n := func(job string) int { return len(complete(d.checkpoints(job))) }
	eventually(t, 60*time.Second, "4 checkpoints of busy and udp-safe", func() bool { return n("busy") >= 4 && n("udp-safe") >= 4 })
	for _, job := range []string{"idle-sleep", "idle-pipe", "signalled", "udp-always"} {
		if got := n(job); got < 1 || got > 2 {
			t.Errorf("%s: %d complete checkpoints while busy had 4, want 1 (or 2 if it was still starting): it was not skipped", job, got)
		}
		if !hasEvent(d.events(job), "unchanged") {
			t.Errorf("%s: no \"unchanged\" event; events: %+v", job, d.events(job))
		}
	}
	for _, job := range []string{"busy", "udp-safe"} {
		if hasEvent(d.events(job), "unchanged") {
			t.Errorf("%s was skipped as unchanged", job)
		}
	}
	// CRIU logs of periodic checkpoints: the last few successes only.
	busy := d.job("busy")
	logs, _ := filepath.Glob(filepath.Join(d.env.home, ".cedana", "logs", "dump-periodic-"+busy.ID+"-*"))
	if len(logs) == 0 || len(logs) > 3 {
		t.Errorf("%d CRIU work directories for the busy job's periodic checkpoints, want 1 to 3: %v", len(logs), logs)
	}
	if !hasEvent(d.events("udp-safe"), "skip-unsafe") {
		t.Errorf("udp-safe: no skip-unsafe event saying why it is checkpointed; events: %+v", d.events("udp-safe"))
	}

	// Wake the signalled job: the next run must see the change and
	// checkpoint, and the new checkpoint must hold it.
	before := d.job("signalled").LastCheckpointID
	if err := syscall.Kill(sig.PID, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the signal handler's count", func() bool { return readCounter(sigPath) == 1 })
	eventually(t, 10*time.Second, "a checkpoint of the signalled job after it ran", func() bool { return d.job("signalled").LastCheckpointID != before })
	if !hasEvent(d.events("signalled"), "changed") {
		t.Errorf("no \"changed\" event after the signal; events: %+v", d.events("signalled"))
	}
	d.ok("kill", "signalled")
	eventually(t, 10*time.Second, "the killed job's PID to be freed", func() bool { return procState(sig.PID) == 0 })
	r := d.restoreJob("signalled")
	if err := syscall.Kill(r.PID, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the restored job to count a second signal", func() bool { return readCounter(sigPath) == 2 })

	resp, err := http.Get("http://" + d.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`(?m)^cedana_periodic_runs_total\{outcome="unchanged"\} [1-9]`).Match(body) {
		t.Errorf("no unchanged runs counted in /metrics:\n%s", grepLines(string(body), "cedana_periodic"))
	}
}
