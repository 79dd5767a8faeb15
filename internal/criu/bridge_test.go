package criu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

func TestBridgeArgs(t *testing.T) {
	images := t.TempDir()
	d, err := os.Open(images)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	self, imagesFD := os.Getpid(), int32(d.Fd())
	str := func(s string) *string { return &s }
	i32 := func(n int32) *int32 { return &n }
	u32 := func(n uint32) *uint32 { return &n }
	typ := func(t rpc.CriuReqType) *rpc.CriuReqType { return &t }
	mode := rpc.CriuCgMode_FULL
	conf := filepath.Join(t.TempDir(), "runc.conf")
	if err := os.WriteFile(conf, []byte("tcp-established\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name    string
		req     *rpc.CriuReq
		want    []string // in order, as a substring of the joined command line
		refused string   // a substring of the refusal
	}{
		{
			name: "runc's dump",
			req: &rpc.CriuReq{Type: typ(rpc.CriuReqType_DUMP), Opts: &rpc.CriuOpts{
				ImagesDirFd: i32(imagesFD), LogLevel: i32(4), LogFile: str("dump.log"), Root: str("/rootfs"),
				ManageCgroups: boolp(true), NotifyScripts: boolp(true), Pid: i32(42), ShellJob: boolp(false),
				LeaveStopped: boolp(true), TcpEstablished: boolp(true), ExtUnixSk: boolp(false), FileLocks: boolp(false),
				EmptyNs: u32(0x40000000), OrphanPtsMaster: boolp(true), AutoDedup: boolp(false), LazyPages: boolp(false),
				ConfigFile: str("/nonexistent/runc.conf"), FreezeCgroup: str("/sys/fs/cgroup/freezer/c"),
				ExtMnt: []*rpc.ExtMountMap{{Key: str("/usr"), Val: str("/usr")}}},
			},
			want: []string{"dump --stream -t 42 --leave-stopped --freeze-cgroup /sys/fs/cgroup/freezer/c -D " + images,
				"-o dump.log -v4 --root /rootfs --manage-cgroups=soft --action-script /s --tcp-established --empty-ns net --ext-mount-map /usr:/usr"},
		},
		{
			name: "runc's restore",
			req: &rpc.CriuReq{Type: typ(rpc.CriuReqType_RESTORE), Opts: &rpc.CriuOpts{
				ImagesDirFd: i32(imagesFD), WorkDirFd: i32(7), LogFile: str("restore.log"), RstSibling: boolp(true),
				EvasiveDevices: boolp(true), ManageCgroupsMode: &mode, ConfigFile: str(conf),
				CgRoot:    []*rpc.CgroupRoot{{Ctrl: str("cpu"), Path: str("/c")}, {Path: str("/all")}},
				InheritFd: []*rpc.InheritFd{{Key: str("pipe:[1]"), Fd: i32(1)}},
				Veths:     []*rpc.CriuVethPair{{IfIn: str("eth0"), IfOut: str("veth1")}}},
			},
			want: []string{"restore --stream --restore-detached --restore-sibling --cgroup-root cpu:/c --cgroup-root /all --veth-pair eth0=veth1 --inherit-fd fd[1]:pipe:[1] --evasive-devices",
				"-W /proc/", "--manage-cgroups=full", "--config " + conf},
		},
		{
			name: "leave running",
			req: &rpc.CriuReq{Type: typ(rpc.CriuReqType_DUMP), Opts: &rpc.CriuOpts{
				ImagesDirFd: i32(imagesFD), Pid: i32(1), LeaveRunning: boolp(true)}},
			want: []string{"--leave-running"},
		},
		{
			name: "page server",
			req: &rpc.CriuReq{Type: typ(rpc.CriuReqType_DUMP), Opts: &rpc.CriuOpts{
				ImagesDirFd: i32(imagesFD), Pid: i32(1), Ps: &rpc.CriuPageServerInfo{Port: i32(1)}}},
			refused: "does not translate: ps",
		},
		{
			name: "lazy pages",
			req: &rpc.CriuReq{Type: typ(rpc.CriuReqType_DUMP), Opts: &rpc.CriuOpts{
				ImagesDirFd: i32(imagesFD), Pid: i32(1), LazyPages: boolp(true)}},
			refused: "lazy_pages",
		},
		{
			name: "another images directory",
			req: &rpc.CriuReq{Type: typ(rpc.CriuReqType_DUMP), Opts: &rpc.CriuOpts{
				ImagesDirFd: i32(0), Pid: i32(1)}},
			refused: "not the one cedana streams",
		},
		{
			name:    "pre-dump",
			req:     &rpc.CriuReq{Type: typ(rpc.CriuReqType_PRE_DUMP), Opts: &rpc.CriuOpts{ImagesDirFd: i32(imagesFD)}},
			refused: "PRE_DUMP",
		},
		{
			name: "empty namespaces but net",
			req: &rpc.CriuReq{Type: typ(rpc.CriuReqType_DUMP), Opts: &rpc.CriuOpts{
				ImagesDirFd: i32(imagesFD), Pid: i32(1), EmptyNs: u32(0x40000000 | 0x08000000)}},
			refused: "empty namespaces",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			args, err := bridgeArgs(c.req, self, images, "/s")
			if c.refused != "" {
				if err == nil || !strings.Contains(err.Error(), c.refused) {
					t.Fatalf("got %q, %v; want a refusal with %q", args, err, c.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			line := strings.Join(args, " ")
			for _, w := range c.want {
				if !strings.Contains(line, w) {
					t.Errorf("command line\n  %s\nlacks\n  %s", line, w)
				}
			}
		})
	}
}

func TestWriteBridge(t *testing.T) {
	dir := t.TempDir()
	cfg := &BridgeConfig{CRIU: "/usr/sbin/criu", Images: "/proc/1/fd/3", LeaveStopped: true}
	script, err := WriteBridge(dir, "/opt/it's/cedana", cfg)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := os.ReadFile(script)
	if !strings.Contains(string(body), `exec '/opt/it'\''s/cedana' criu-bridge --config '`) {
		t.Errorf("script does not quote the executable:\n%s", body)
	}
	if cfg.Log != filepath.Join(dir, "criu-bridge.log") {
		t.Errorf("log %q not in the work directory", cfg.Log)
	}
	if err := os.WriteFile(cfg.Log, []byte("12:00 staged: runc asked for x\n12:01 other\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := BridgeLog(*cfg); got != "runc asked for x" {
		t.Errorf("BridgeLog = %q", got)
	}
}
