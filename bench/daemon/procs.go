package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/proc"
)

// bench holds the options and every process the benchmark started, so
// that cleanup can kill them by PID.
type bench struct {
	o options

	mu      sync.Mutex
	tracked map[int]uint64 // PID → start time
	daemons []*daemonProc
}

func newBench(o options) *bench {
	return &bench{o: o, tracked: map[int]uint64{}}
}

// track remembers a process to kill at the end.
func (b *bench) track(pid int) {
	if st := startTime(pid); st != 0 {
		b.mu.Lock()
		b.tracked[pid] = st
		b.mu.Unlock()
	}
}

// killTracked kills every tracked process that is still the one tracked
// (same PID and start time), with its descendants.
func (b *bench) killTracked() {
	b.mu.Lock()
	tracked := b.tracked
	b.tracked = map[int]uint64{}
	b.mu.Unlock()
	for pid, st := range tracked {
		if startTime(pid) != st {
			continue
		}
		for _, c := range descendants(pid) {
			_ = syscall.Kill(c, syscall.SIGKILL)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// stopAll stops every daemon and kills every tracked process: the jobs
// (and, once their daemon is gone, the CRIU processes it had started).
func (b *bench) stopAll() {
	b.mu.Lock()
	ds := b.daemons
	b.daemons = nil
	b.mu.Unlock()
	for _, d := range ds {
		d.trackJobs(b)
		for _, p := range descendants(d.pid()) {
			b.track(p) // jobs and in-flight CRIU processes
		}
		d.stop()
	}
	b.killTracked()
}

// cleanup is stopAll, then removes the work dir.
func (b *bench) cleanup() {
	b.stopAll()
	if !b.o.keepOnFail {
		_ = os.RemoveAll(b.o.work)
	}
}

// daemonProc is a daemon started by the benchmark.
type daemonProc struct {
	cmd      *exec.Cmd
	done     chan struct{}
	home     string
	socket   string
	sockDir  string
	stateDir string
	metrics  string // host:port, or ""
	conn     *grpc.ClientConn
	client   pb.CedanaClient
}

// startDaemon starts `cedana daemon start` on stateDir with an isolated
// HOME under the work dir, and waits until it serves.
// cfg, if not nil, is written as the daemon's configuration file.
func (b *bench) startDaemon(ctx context.Context, name, stateDir, metricsAddr string, cfg map[string]any) (*daemonProc, error) {
	home := filepath.Join(b.o.work, name+"-home")
	if err := os.MkdirAll(filepath.Join(home, ".cedana"), 0o700); err != nil {
		return nil, err
	}
	if cfg != nil {
		data, err := json.Marshal(cfg)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(home, ".cedana", "cedana_config.json"), data, 0o600); err != nil {
			return nil, err
		}
	}
	sockDir, err := os.MkdirTemp("/tmp", "cdb")
	if err != nil {
		return nil, err
	}
	d := &daemonProc{home: home, socket: filepath.Join(sockDir, "s"), sockDir: sockDir, stateDir: stateDir,
		metrics: metricsAddr, done: make(chan struct{})}
	logf, err := os.Create(filepath.Join(b.o.work, name+"-daemon.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	m := metricsAddr
	if m == "" {
		m = "off"
	}
	d.cmd = exec.Command(b.o.cedana, "daemon", "start", "--socket", d.socket, "--state-dir", stateDir, "--metrics-addr", m)
	d.cmd.Env = append(os.Environ(), "HOME="+home)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start daemon: %w", err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	b.mu.Lock()
	b.daemons = append(b.daemons, d)
	b.mu.Unlock()

	d.conn, err = grpc.NewClient("unix://"+d.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	d.client = pb.NewCedanaClient(d.conn)
	health := healthpb.NewHealthClient(d.conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-d.done:
			log, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("the daemon exited before serving:\n%s", log)
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := health.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return d, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the daemon did not serve within 30 s (last error: %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pid is the daemon's PID.
func (d *daemonProc) pid() int { return d.cmd.Process.Pid }

// cli runs cedana against this daemon.
func (d *daemonProc) cli(bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, append([]string{"--address", d.socket}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+d.home)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("cedana %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// runJob starts a job with `cedana run -o json` and returns its ID and PID.
func (d *daemonProc) runJob(b *bench, args ...string) (id string, pid int, err error) {
	out, err := d.cli(b.o.cedana, append([]string{"run", "-o", "json"}, args...)...)
	if err != nil {
		return "", 0, err
	}
	var j struct {
		ID  string `json:"id"`
		PID int    `json:"pid"`
	}
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		return "", 0, fmt.Errorf("run -o json: %v: %s", err, out)
	}
	b.track(j.PID)
	return j.ID, j.PID, nil
}

// trackJobs remembers the PIDs of the daemon's running jobs.
func (d *daemonProc) trackJobs(b *bench) {
	if d.client == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := d.client.ListJobs(ctx, &pb.ListJobsRequest{})
	if err != nil {
		return
	}
	for _, j := range resp.GetJobs() {
		if j.GetState() == "running" || j.GetState() == "dumping" {
			b.track(int(j.GetPid()))
		}
	}
}

// stop sends SIGINT (jobs are left running, to be killed by PID), then
// SIGKILL after 5 s.
func (d *daemonProc) stop() {
	if d.conn != nil {
		_ = d.conn.Close()
	}
	_ = d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	_ = os.RemoveAll(d.sockDir)
}

// procStat holds the fields of /proc/PID/stat the benchmark uses.
type procStat struct {
	state                        byte
	utime, stime, cutime, cstime uint64 // clock ticks
	startTime                    uint64
}

func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return procStat{}, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+2:]) // f[0] is field 3
	if len(f) < 20 {
		return procStat{}, errors.New("short stat")
	}
	u := func(k int) uint64 { n, _ := strconv.ParseUint(f[k-3], 10, 64); return n }
	return procStat{state: f[0][0], utime: u(14), stime: u(15), cutime: u(16), cstime: u(17), startTime: u(22)}, nil
}

func startTime(pid int) uint64 {
	st, err := readStat(pid)
	if err != nil {
		return 0
	}
	return st.startTime
}

// statusKiB returns a "VmXXX:" field of /proc/PID/status in KiB.
func statusKiB(pid int, field string) uint64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseUint(strings.Fields(rest)[0], 10, 64)
			return n
		}
	}
	return 0
}

// descendants lists pid's descendants, breadth first.
func descendants(pid int) []int {
	tree, err := proc.Tree(pid)
	if err != nil || len(tree) == 0 {
		return nil
	}
	return tree[1:]
}

// clockTicks is the kernel's USER_HZ, from getconf (100 on Linux).
func clockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return float64(n)
		}
	}
	return 100
}
