package container

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/criu"
)

func TestParseNetns(t *testing.T) {
	links := `1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
12: eth0@if13: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default \    link/ether 02:42:ac:11:00:02 brd ff:ff:ff:ff:ff:ff link-netnsid 0
`
	addrs := `1: lo    inet 127.0.0.1/8 scope host lo\       valid_lft forever preferred_lft forever
1: lo    inet 192.0.2.10/32 scope global lo\       valid_lft forever preferred_lft forever
1: lo    inet6 ::1/128 scope host \       valid_lft forever preferred_lft forever
12: eth0    inet 172.17.0.2/16 brd 172.17.255.255 scope global eth0\       valid_lft forever preferred_lft forever
`
	got := parseNetns(links, addrs)
	want := &netnsConfig{LoopbackUp: true, Addresses: []string{"192.0.2.10/32"}, OtherLinks: []string{"eth0"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseNetns = %+v, want %+v", got, want)
	}
	if got := parseNetns("1: lo: <LOOPBACK> mtu 65536\n", ""); got.LoopbackUp {
		t.Error("a down loopback was read as up")
	}
}

func TestNetnsHookRefusesOddAddresses(t *testing.T) {
	for _, a := range []string{"1.2.3.4/32; rm -rf /", "$(x)/8", "1.2.3.4", "::1/999"} {
		if _, err := writeNetnsHook(&netnsConfig{Addresses: []string{a}}, t.TempDir()); err == nil {
			t.Errorf("address %q accepted", a)
		}
	}
	dir := t.TempDir()
	hook, err := writeNetnsHook(&netnsConfig{LoopbackUp: true, Addresses: []string{"192.0.2.10/32", "2001:db8::1/128"}}, dir)
	if err != nil {
		t.Fatal(err)
	}
	script, _ := os.ReadFile(filepath.Join(dir, "netns-restore.sh"))
	for _, want := range []string{"ip addr add 192.0.2.10/32 dev lo", "ip addr add 2001:db8::1/128 dev lo", "ip link set lo up"} {
		if !strings.Contains(string(script), want) {
			t.Errorf("hook script lacks %q:\n%s", want, script)
		}
	}
	if hook["path"] != "/bin/sh" {
		t.Errorf("hook path %v", hook["path"])
	}
}

func TestDeriveConfig(t *testing.T) {
	in := []byte(`{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},"linux":{"cgroupsPath":"/x/y"},"hooks":{"poststop":[{"path":"/bin/true"}]}}`)
	out, err := deriveConfig(in, "/state/c1/rootfs")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Root  struct{ Path string }
		Linux map[string]any
		Hooks struct{ Poststop []map[string]any }
	}
	if err := json.Unmarshal(out, &spec); err != nil {
		t.Fatal(err)
	}
	if spec.Root.Path != "/state/c1/rootfs" {
		t.Errorf("root.path = %q", spec.Root.Path)
	}
	if _, ok := spec.Linux["cgroupsPath"]; ok {
		t.Error("cgroupsPath kept: clones would share a cgroup")
	}
	if len(spec.Hooks.Poststop) != 2 {
		t.Errorf("poststop hooks: %v", spec.Hooks.Poststop)
	}
}

func TestBundleRootfs(t *testing.T) {
	cases := []struct {
		bundle, config, want string
		ok                   bool
	}{
		{"/b", `{"root":{"path":"rootfs"}}`, "/b/rootfs", true},
		{"/b", `{"root":{"path":"/abs/root"}}`, "/abs/root", true},
		{"", `{"root":{"path":"rootfs"}}`, "", false},
		{"/b", `{"root":{}}`, "", false},
		{"/b", `not json`, "", false},
	}
	for _, c := range cases {
		got, err := bundleRootfs(c.bundle, []byte(c.config))
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("bundleRootfs(%q, %s) = %q, %v", c.bundle, c.config, got, err)
		}
	}
}

func TestExplainHints(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		log     string
		cause   criu.Cause
		hintHas string
	}{
		{"(00.04) Error (criu/files-reg.c:1790): Can't lookup mount=27 for fd=1 path=/tmp/out.log\n", CauseHostFile, "host"},
		{"(00.1) Error (criu/sk-inet.c:188): inet: Connected TCP socket, consider using --tcp-established option.\n", criu.CauseTCPEstablished, "/etc/criu/runc.conf"},
		{"(00.1) Error (criu/netfilter.c:88): iptables-restore failed\n(00.1) Error (criu/net.c:3100): Failed to lock TCP connection\n", criu.CauseNetworkLock, "network-lock nftables"},
		{"(00.1) Error (criu/mount.c:1090): mnt: Mount 120 ./data (master_id: 5 shared_id: 0) has unreachable sharing\n", CauseMount, "bind mount"},
		// Causes that containers share with processes, explained by the
		// same table (the container engine had none for them).
		{"(00.1) Error (criu/files-reg.c:1000): Can't dump ghost file /tmp/x of 2097152 size, increase limit\n", criu.CauseGhostLimit, "ghost-limit 64MiB"},
		{"(00.1) Error (criu/seize.c:10): Unable to seize 42: Operation not permitted\n", criu.CauseTraced, "tracer"},
	}
	docker := &dockerDriver{}
	for _, c := range cases {
		p := filepath.Join(dir, "dump.log")
		content := "(00.03) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n" + c.log
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		err := explain("checkpoint", Docker, errors.New("criu failed"), p, docker.optionHint)
		var ce *criu.Error
		if !errors.As(err, &ce) || ce.Cause != c.cause || !strings.Contains(ce.Hint, c.hintHas) {
			t.Errorf("log %q: got cause %q hint %q", c.log, ce.Cause, ce.Hint)
		}
		if strings.Contains(err.Error(), "RLIMIT_NOFILE") {
			t.Errorf("the harmless rlimit line was shown: %v", err)
		}
	}
}

func TestLogPathIn(t *testing.T) {
	for msg, want := range map[string]string{
		`Cannot checkpoint container c: runc: criu failed: type NOTIFY errno 0 path= /run/containerd/io.containerd.runtime.v2.task/moby/abc/criu-dump.log: unknown`: "/run/containerd/io.containerd.runtime.v2.task/moby/abc/criu-dump.log",
		`criu failed: type NOTIFY errno 0; log file: /var/log/x/restore.log`:                                                                                        "/var/log/x/restore.log",
		`no log here`: "",
	} {
		if got := logPathIn(msg); got != want {
			t.Errorf("logPathIn(%q) = %q, want %q", msg, got, want)
		}
	}
}

func TestRuncErrorKeepsErrors(t *testing.T) {
	out := []byte(`time="2026-11-29T15:49:17Z" level=warning msg="Failed to remove cgroup (will retry)" error="rmdir /sys/fs/cgroup/cpu/tcp: device or resource busy"
time="2026-11-29T15:49:17Z" level=error msg="criu failed: type NOTIFY errno 0\nlog file: /x/restore.log"
`)
	err := runcError(errors.New("exit status 1"), out)
	if strings.Contains(err.Error(), "cgroup") || !strings.Contains(err.Error(), "log file: /x/restore.log") {
		t.Errorf("runcError = %v", err)
	}
}

func TestCheckKind(t *testing.T) {
	proc := &archive.Manifest{Kind: archive.KindProcess, Processes: []archive.Process{{Name: "redis"}}}
	err := checkKind(proc, Docker, "a.zip")
	if !errors.Is(err, checkpoint.ErrInvalidInput) || !strings.Contains(err.Error(), "cedana client restore a.zip") {
		t.Errorf("process archive: %v", err)
	}
	runc := &archive.Manifest{Kind: Runc, Container: &archive.ContainerInfo{Runtime: Runc}}
	if err := checkKind(runc, Docker, "a.zip"); err == nil || !strings.Contains(err.Error(), "cedana restore runc a.zip") {
		t.Errorf("runc archive as docker: %v", err)
	}
	if err := checkKind(runc, Runc, "a.zip"); err != nil {
		t.Errorf("runc archive as runc: %v", err)
	}
}

func TestCheckRuncID(t *testing.T) {
	for _, ok := range []string{"a", "web-1", "x.y_z+1"} {
		if err := checkRuncID(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "../x", "a b"} {
		if err := checkRuncID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/a\040b\134c`); got != `/a b\c` {
		t.Errorf("unescapeMount = %q", got)
	}
}
