package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pythonBundle is a bundle whose rootfs is busybox plus the host's /usr
// (read-only bind mount, with /lib and /lib64 pointing into it), running
// the host's python3 with script.
func pythonBundle(t *testing.T, script string) string {
	t.Helper()
	rootfs := busyboxRootfs(t)
	for _, l := range []string{"lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(rootfs, l)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(rootfs, "usr"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "mem.py"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	bundle := makeBundle(t, rootfs, "/usr/bin/python3", "/mem.py")
	p := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	spec["mounts"] = append(spec["mounts"].([]any),
		map[string]any{"destination": "/usr", "type": "bind", "source": "/usr", "options": []string{"rbind", "ro"}})
	data, _ = json.MarshalIndent(spec, "", "\t")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return bundle
}

// smallTmpfs mounts a tmpfs of size bytes for the test and returns it.
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Fatalf("mount a %s tmpfs: %v", size, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestRuncStreamsMemory: a runc container holding 256 MiB streams its
// memory straight into the archive and back (the CRIU bridge), as a
// process does. Its staging directory is a 32 MiB tmpfs, which the
// pages (256 MiB) cannot fit in: the same dump with streaming off fails
// there. A dump whose pages fail on their way to the archive, and a
// streamed dump with --leave-running, leave the container running.
func TestRuncStreamsMemory(t *testing.T) {
	requireContainers(t, "runc", "nsenter", "ip", "python3")
	bin := faultBinary(t)
	ce := newCtrEnv(t)
	bundle := pythonBundle(t, memCounterScript("/count", 256))
	if r := ce.run("run", "runc", "--runc-root", ce.runcRoot, "--bundle", bundle, "--id", "mem"); r.code != 0 {
		t.Fatalf("run runc: %s", r)
	}
	counter := func() string { return countFile(ce.runcPID("mem")) }
	var before int
	var digest string
	eventually(t, 60*time.Second, "the container to hold its memory and count", func() bool {
		before, digest = readMemCounter(counter())
		return before >= 3
	})
	staging := smallTmpfs(t, "32m")
	dump := func(env []string, extra ...string) result {
		return ce.runBinary(bin, append([]string{"CEDANA_DAEMON_STATE_DIR=" + ce.state}, env...),
			append([]string{"-v", "--staging-dir", staging, "dump", "runc", "--runc-root", ce.runcRoot, "--id", "mem", "-d", ce.dir}, extra...)...)
	}
	goesOn := func(t *testing.T, what string) {
		t.Helper()
		if ce.runcPID("mem") == 0 {
			t.Fatalf("the container does not run after %s", what)
		}
		checkMemContinues(t, counter(), before, digest)
		before, _ = readMemCounter(counter())
	}

	t.Run("staged does not fit", func(t *testing.T) {
		r := dump([]string{"CEDANA_CRIU_STREAM=false"})
		if r.code == 0 {
			t.Fatalf("a staged dump of 256 MiB fit into a 32 MiB staging tmpfs: the test cannot tell staged from streamed\n%s", r)
		}
		goesOn(t, "a staged dump that did not fit")
		noArchive(t, ce.dir)
	})
	t.Run("pages fail on their way", func(t *testing.T) {
		r := dump([]string{"CEDANA_FAULT=sink-pages"})
		if r.code == 0 {
			t.Fatalf("the dump succeeded despite the fault: %s", r)
		}
		if !strings.Contains(r.stderr, "still running") || !strings.Contains(r.stderr, "injected") {
			t.Errorf("the error does not say the pages failed and the container runs:\n%s", r.stderr)
		}
		goesOn(t, "a failed streamed dump")
		noArchive(t, ce.dir)
	})
	t.Run("leave running", func(t *testing.T) {
		r := dump(nil, "--leave-running")
		if r.code != 0 {
			t.Fatalf("streamed dump --leave-running: %s", r)
		}
		if !strings.Contains(r.stderr, "stream=true") || strings.Contains(r.stdout+r.stderr, "staged as files") {
			t.Fatalf("the dump did not stream:\n%s", r.stderr)
		}
		goesOn(t, "a dump with --leave-running")
		os.Remove(r.stdout)
	})
	t.Run("dump and restore", func(t *testing.T) {
		r := dump(nil)
		if r.code != 0 {
			t.Fatalf("streamed dump: %s", r)
		}
		archive := r.stdout
		if ce.runcPID("mem") != 0 {
			t.Fatal("the container still runs after its dump")
		}
		r = ce.runBinary(bin, []string{"CEDANA_DAEMON_STATE_DIR=" + ce.state},
			"-v", "--staging-dir", staging, "restore", "runc", "--runc-root", ce.runcRoot, archive)
		if r.code != 0 {
			t.Fatalf("streamed restore: %s", r)
		}
		if !strings.Contains(r.stderr, "stream=true") {
			t.Fatalf("the restore did not stream:\n%s", r.stderr)
		}
		goesOn(t, "its restore")
	})
}

// TestRuncRefusesMPTCP: a container holding a Multipath TCP socket
// (which CRIU cannot dump) is refused before runc or CRIU run, as a
// process is, with the fix; it goes on running and nothing is written.
func TestRuncRefusesMPTCP(t *testing.T) {
	requireContainers(t, "runc", "nsenter", "ip", "python3")
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP); err != nil {
		t.Skipf("skipping: this kernel has no Multipath TCP (%v)", err)
	} else {
		unix.Close(fd)
	}
	ce := newCtrEnv(t)
	bundle := pythonBundle(t, `
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.bind(("127.0.0.1", 8080))
s.listen()
i = 0
while True:
    with open("/count.tmp", "w") as f:
        f.write(str(i))
    __import__("os").replace("/count.tmp", "/count")
    i += 1
    time.sleep(0.05)
`)
	if r := ce.run("run", "runc", "--runc-root", ce.runcRoot, "--bundle", bundle, "--id", "mptcp"); r.code != 0 {
		t.Fatalf("run runc: %s", r)
	}
	before := waitCounter(t, countFile(ce.runcPID("mptcp")), 3)
	logs := t.TempDir()
	r := ce.run("--log-dir", logs, "dump", "runc", "--runc-root", ce.runcRoot, "--id", "mptcp", "-d", ce.dir)
	if r.code != 3 {
		t.Fatalf("dump of a container with an MPTCP socket: exit %d, want 3 (refused)\n%s", r.code, r)
	}
	for _, want := range []string{"Multipath TCP", "GODEBUG=multipathtcp=0", "still running"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the error does not say %q:\n%s", want, r.stderr)
		}
	}
	if ents, _ := os.ReadDir(logs); len(ents) > 0 {
		t.Errorf("CRIU ran (work directory %s): the container was not refused before", ents[0].Name())
	}
	pid := ce.runcPID("mptcp")
	if pid == 0 {
		t.Fatal("the container does not run after the refused dump")
	}
	waitCounter(t, countFile(pid), before+3)
	noArchive(t, ce.dir)
}
