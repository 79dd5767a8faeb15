package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRunc checkpoints containers run with runc: a counter, a TCP server
// with its own address, an established connection, a clone, bad input.
func TestRunc(t *testing.T) {
	requireContainers(t, "runc", "nsenter", "ip")
	rootfs := busyboxRootfs(t)

	t.Run("Counter", func(t *testing.T) {
		ce := newCtrEnv(t)
		bundle := makeBundle(t, rootfs, "sh", "-c", "echo started; "+counterCmd)
		r := ce.run("run", "runc", "--runc-root", ce.runcRoot, "--bundle", bundle, "--id", "counter")
		if r.code != 0 {
			t.Fatalf("run runc: %s", r)
		}
		pid := ce.runcPID("counter")
		before := waitCounter(t, countFile(pid), 5)

		r = ce.run("dump", "runc", "--runc-root", ce.runcRoot, "--id", "counter", "-d", ce.dir)
		if r.code != 0 {
			t.Fatalf("dump runc: %s", r)
		}
		archive := r.stdout
		if ce.runcPID("counter") != 0 {
			t.Fatal("the container still runs after its dump")
		}
		if _, err := os.Stat(filepath.Join(rootfs, "count")); err == nil {
			t.Fatal("the bundle's rootfs was written to")
		}
		r = ce.run("restore", "runc", "--runc-root", ce.runcRoot, archive)
		if r.code != 0 || r.stdout != "counter" {
			t.Fatalf("restore runc: %s", r)
		}
		checkContinues(t, countFile(ce.runcPID("counter")), before)
		log, _ := os.ReadFile(filepath.Join(ce.state, "runc", "logs", "counter.log"))
		if !strings.Contains(string(log), "started") {
			t.Errorf("the container's output was not logged: %q", log)
		}
	})

	t.Run("ServerKeepsAddressAndState", func(t *testing.T) {
		ce := newCtrEnv(t)
		bundle := makeBundle(t, rootfs, "sh", "-c", serverCmd)
		if r := ce.run("run", "runc", "--runc-root", ce.runcRoot, "--bundle", bundle, "--id", "srv"); r.code != 0 {
			t.Fatalf("run runc: %s", r)
		}
		pid := ce.runcPID("srv")
		// An address of the container's own network namespace (TEST-NET-1:
		// it exists only there), and traffic only inside that namespace.
		if out, err := inNetns(pid, "ip", "addr", "add", "192.0.2.10/32", "dev", "lo"); err != nil {
			t.Fatalf("add address: %v\n%s", err, out)
		}
		var first string
		eventually(t, 10*time.Second, "the server to answer", func() bool {
			s, err := netnsRequest(pid, "192.0.2.10:8080")
			first = s
			return err == nil && strings.HasPrefix(s, "count ")
		})
		n := countOf(t, first)

		r := ce.run("dump", "runc", "--runc-root", ce.runcRoot, "--id", "srv", "-d", ce.dir)
		if r.code != 0 {
			t.Fatalf("dump runc: %s", r)
		}
		if r = ce.run("restore", "runc", "--runc-root", ce.runcRoot, r.stdout); r.code != 0 {
			t.Fatalf("restore runc: %s", r)
		}
		pid = ce.runcPID("srv")
		out, err := inNetns(pid, "ip", "-o", "addr", "show", "dev", "lo")
		if err != nil || !strings.Contains(out, "192.0.2.10") {
			t.Fatalf("the restored container lost its address 192.0.2.10: %v\n%s", err, out)
		}
		var got string
		eventually(t, 10*time.Second, "the restored server to answer", func() bool {
			s, err := netnsRequest(pid, "192.0.2.10:8080")
			got = s
			return err == nil && strings.HasPrefix(s, "count ")
		})
		if m := countOf(t, got); m != n+1 {
			t.Fatalf("the restored server answered %q, want count %d: its state was lost", got, n+1)
		}
	})

	t.Run("EstablishedTCP", func(t *testing.T) {
		ce := newCtrEnv(t)
		// A connection inside the container: a client streams numbers to
		// a server that appends them to /got.
		script := `sleep 100000 | nc -l -p 9000 > /got & sleep 0.3; i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done | nc 127.0.0.1 9000`
		bundle := makeBundle(t, rootfs, "sh", "-c", script)
		if r := ce.run("run", "runc", "--runc-root", ce.runcRoot, "--bundle", bundle, "--id", "tcp"); r.code != 0 {
			t.Fatalf("run runc: %s", r)
		}
		got := func(pid int) []int { return readNumbers(filepath.Join("/proc", strconv.Itoa(pid), "root", "got")) }
		pid := ce.runcPID("tcp")
		eventually(t, 10*time.Second, "numbers to flow", func() bool { return len(got(pid)) >= 5 })

		r := ce.run("dump", "runc", "--runc-root", ce.runcRoot, "--id", "tcp", "-d", ce.dir)
		if r.code != 0 {
			t.Fatalf("dump runc: %s", r)
		}
		if !strings.Contains(r.stderr, "tcp-established") {
			t.Errorf("the dump did not notice the TCP connection: %s", r.stderr)
		}
		if r = ce.run("restore", "runc", "--runc-root", ce.runcRoot, r.stdout); r.code != 0 {
			t.Fatalf("restore runc: %s", r)
		}
		pid = ce.runcPID("tcp")
		before := len(got(pid))
		eventually(t, 10*time.Second, "numbers to flow again over the restored connection", func() bool { return len(got(pid)) >= before+5 })
		for i, n := range got(pid) {
			if n != i {
				t.Fatalf("the stream restarted or lost data: line %d is %d", i, n)
			}
		}
	})

	t.Run("Clone", func(t *testing.T) {
		ce := newCtrEnv(t)
		bundle := makeBundle(t, rootfs, "sh", "-c", counterCmd)
		if r := ce.run("run", "runc", "--runc-root", ce.runcRoot, "--bundle", bundle, "--id", "orig"); r.code != 0 {
			t.Fatalf("run runc: %s", r)
		}
		before := waitCounter(t, countFile(ce.runcPID("orig")), 3)
		r := ce.run("dump", "runc", "--runc-root", ce.runcRoot, "--id", "orig", "-d", ce.dir)
		if r.code != 0 {
			t.Fatalf("dump runc: %s", r)
		}
		archive := r.stdout
		for _, id := range []string{"clone-a", "clone-b"} {
			if r := ce.run("restore", "runc", "--runc-root", ce.runcRoot, "--id", id, archive); r.code != 0 || r.stdout != id {
				t.Fatalf("restore runc --id %s: %s", id, r)
			}
		}
		for _, id := range []string{"clone-a", "clone-b"} {
			checkContinues(t, countFile(ce.runcPID(id)), before)
		}
		if ce.runcPID("clone-a") == ce.runcPID("clone-b") {
			t.Fatal("both clones have the same PID")
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		ce := newCtrEnv(t)
		r := ce.run("dump", "runc", "--runc-root", ce.runcRoot, "--id", "nosuch", "-d", ce.dir)
		if r.code != 3 || !strings.Contains(r.stderr, `no runc container "nosuch"`) {
			t.Errorf("dump of an unknown container: want exit 3 and a clear message, got %s", r)
		}
		// A container started by hand with its stdout on a host file.
		bundle := makeBundle(t, rootfs, "sh", "-c", "while :; do echo tick; sleep 0.2; done")
		logf, err := os.Create(filepath.Join(t.TempDir(), "host.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("runc", "--root", ce.runcRoot, "run", "-d", "--bundle", bundle, "hostfile")
		cmd.Stdout, cmd.Stderr = logf, logf
		err = cmd.Run()
		logf.Close()
		if err != nil {
			t.Fatalf("runc run: %v", err)
		}
		r = ce.run("dump", "runc", "--runc-root", ce.runcRoot, "--id", "hostfile", "-d", ce.dir)
		if r.code == 0 || !strings.Contains(r.stderr, "host.log") || !strings.Contains(r.stderr, "fix:") {
			t.Errorf("dump of a container writing to a host file: want a failure naming the file, with the fix; got %s", r)
		}
		if ce.runcPID("hostfile") == 0 {
			t.Error("the container no longer runs after a refused dump")
		}
		// A stopped container.
		_, _ = ce.runc("kill", "hostfile", "KILL")
		eventually(t, 5*time.Second, "the container to stop", func() bool { return ce.runcPID("hostfile") == 0 })
		r = ce.run("dump", "runc", "--runc-root", ce.runcRoot, "--id", "hostfile", "-d", ce.dir)
		if r.code != 3 || !strings.Contains(r.stderr, "stopped") {
			t.Errorf("dump of a stopped container: want exit 3 saying it is stopped, got %s", r)
		}
		// An archive of a process.
		p := start(t, "sleep", "1000")
		proc := ce.run("client", "dump", "-p", strconv.Itoa(p.pid()), "-d", ce.dir)
		if proc.code != 0 {
			t.Fatalf("client dump: %s", proc)
		}
		r = ce.run("restore", "runc", "--runc-root", ce.runcRoot, proc.stdout)
		if r.code != 3 || !strings.Contains(r.stderr, "cedana client restore") {
			t.Errorf("restore runc of a process archive: want exit 3 pointing to client restore, got %s", r)
		}
	})
}

// TestDocker checkpoints Docker containers through the engine's API: a
// counter with a changed writable layer, a TCP server, a clone, bad input.
func TestDocker(t *testing.T) {
	requireContainers(t, "nsenter")
	lookDockerd(t)
	d := startDocker(t)
	const image = "cedana-busybox:test"
	d.importBusybox(busyboxRootfs(t), image)
	host := "--docker-host=" + d.host()

	t.Run("Counter", func(t *testing.T) {
		ce := newCtrEnv(t)
		id := d.runContainer("cedana-counter", image, "sh", "-c", "echo hello > /added; rm /bin/vi; "+counterCmd)
		pid := d.pid(id)
		before := waitCounter(t, countFile(pid), 5)
		st, _ := d.inspect(id)
		ip := st.NetworkSettings.IPAddress

		r := ce.run("dump", "docker", host, "cedana-counter", "-d", ce.dir)
		if r.code != 0 {
			t.Fatalf("dump docker: %s", r)
		}
		d.waitNotRunning(id)
		d.remove(id)
		r = ce.run("restore", "docker", host, r.stdout)
		if r.code != 0 {
			t.Fatalf("restore docker: %s", r)
		}
		nid := r.stdout
		d.track(nid)
		pid = d.pid(nid)
		checkContinues(t, countFile(pid), before)
		root := filepath.Join("/proc", strconv.Itoa(pid), "root")
		if data, err := os.ReadFile(filepath.Join(root, "added")); err != nil || string(data) != "hello\n" {
			t.Errorf("a file added in the writable layer did not come back: %q, %v", data, err)
		}
		if _, err := os.Lstat(filepath.Join(root, "bin", "vi")); err == nil {
			t.Error("a file deleted in the writable layer came back")
		}
		if st, _ := d.inspect(nid); ip != "" && st.NetworkSettings.IPAddress != ip {
			t.Errorf("the container's address changed from %s to %s", ip, st.NetworkSettings.IPAddress)
		}
	})

	t.Run("Server", func(t *testing.T) {
		ce := newCtrEnv(t)
		id := d.runContainer("cedana-server", image, "sh", "-c", serverCmd)
		pid := d.pid(id)
		var first string
		eventually(t, 10*time.Second, "the server to answer", func() bool {
			s, err := netnsRequest(pid, "127.0.0.1:8080")
			first = s
			return err == nil && strings.HasPrefix(s, "count ")
		})
		n := countOf(t, first)
		r := ce.run("dump", "docker", host, id, "-d", ce.dir)
		if r.code != 0 {
			t.Fatalf("dump docker: %s", r)
		}
		d.waitNotRunning(id)
		d.remove(id)
		if r = ce.run("restore", "docker", host, r.stdout); r.code != 0 {
			t.Fatalf("restore docker: %s", r)
		}
		d.track(r.stdout)
		pid = d.pid(r.stdout)
		var got string
		eventually(t, 10*time.Second, "the restored server to answer", func() bool {
			s, err := netnsRequest(pid, "127.0.0.1:8080")
			got = s
			return err == nil && strings.HasPrefix(s, "count ")
		})
		if m := countOf(t, got); m != n+1 {
			t.Fatalf("the restored server answered %q, want count %d: its state was lost", got, n+1)
		}
	})

	t.Run("Clone", func(t *testing.T) {
		ce := newCtrEnv(t)
		id := d.runContainer("cedana-orig", image, "sh", "-c", counterCmd)
		before := waitCounter(t, countFile(d.pid(id)), 3)
		r := ce.run("dump", "docker", host, "cedana-orig", "-d", ce.dir)
		if r.code != 0 {
			t.Fatalf("dump docker: %s", r)
		}
		archive := r.stdout
		var pids []int
		for _, name := range []string{"cedana-clone-a", "cedana-clone-b"} {
			r := ce.run("restore", "docker", host, "--name", name, archive)
			if r.code != 0 {
				t.Fatalf("restore docker --name %s: %s", name, r)
			}
			d.track(r.stdout)
			pids = append(pids, d.pid(r.stdout))
		}
		for _, pid := range pids {
			checkContinues(t, countFile(pid), before)
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		ce := newCtrEnv(t)
		r := ce.run("dump", "docker", host, "cedana-nosuch", "-d", ce.dir)
		if r.code != 3 || !strings.Contains(r.stderr, `no Docker container "cedana-nosuch"`) {
			t.Errorf("dump of an unknown container: want exit 3 and a clear message, got %s", r)
		}
		id := d.runContainer("cedana-stopped", image, "sh", "-c", "exit 0")
		d.waitNotRunning(id)
		r = ce.run("dump", "docker", host, "cedana-stopped", "-d", ce.dir)
		if r.code != 3 || !strings.Contains(r.stderr, "not running") {
			t.Errorf("dump of a stopped container: want exit 3 saying it is not running, got %s", r)
		}
		p := start(t, "sleep", "1000")
		proc := ce.run("client", "dump", "-p", strconv.Itoa(p.pid()), "-d", ce.dir)
		if proc.code != 0 {
			t.Fatalf("client dump: %s", proc)
		}
		r = ce.run("restore", "docker", host, proc.stdout)
		if r.code != 3 || !strings.Contains(r.stderr, "cedana client restore") {
			t.Errorf("restore docker of a process archive: want exit 3 pointing to client restore, got %s", r)
		}
		if data, _ := os.ReadFile("/etc/criu/runc.conf"); strings.Contains(string(data), "tcp-established") {
			return // this engine's CRIU keeps TCP connections: nothing to refuse
		}
		id = d.runContainer("cedana-conn", image, "sh", "-c",
			`sleep 100000 | nc -l -p 9000 > /dev/null & sleep 0.3; sleep 100000 | nc 127.0.0.1 9000`)
		pid := d.pid(id)
		eventually(t, 10*time.Second, "the connection to be established", func() bool {
			out, _ := inNetns(pid, "cat", "/proc/net/tcp")
			return strings.Contains(out, " 01 ")
		})
		r = ce.run("dump", "docker", host, id, "-d", ce.dir)
		if r.code != 3 || !strings.Contains(r.stderr, "/etc/criu/runc.conf") {
			t.Errorf("dump of a container with a TCP connection: want exit 3 with the fix, got %s", r)
		}
		if st, err := d.inspect(id); err != nil || !st.State.Running {
			t.Error("the container no longer runs after a refused dump")
		}
	})
}

// readNumbers reads a file of one integer per line, ignoring a partial last
// line.
func readNumbers(path string) []int {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	lines := strings.Split(string(data), "\n")
	var out []int
	for _, l := range lines[:len(lines)-1] {
		n, err := strconv.Atoi(strings.TrimSpace(l))
		if err != nil {
			break
		}
		out = append(out, n)
	}
	return out
}
