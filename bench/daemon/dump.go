package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// dumpLatency is part (c): the same kind of process (a Python process
// holding sizeMiB, half random, half text) dumped by the standalone client
// and through the daemon, alternately, wall time of the CLI call each.
func (b *bench) dumpLatency(ctx context.Context) ([]row, error) {
	py, err := exec.LookPath("python3")
	if err != nil {
		return nil, fmt.Errorf("python3: %w", err)
	}
	d, err := b.startDaemon(ctx, "dump", filepath.Join(b.o.work, "dump-state"), "", nil)
	if err != nil {
		return nil, err
	}
	clientDir := filepath.Join(b.o.work, "client-dumps")
	size := strconv.Itoa(b.o.sizeMiB)
	var client, daemon, daemonSelf []float64
	for i := range b.o.runs {
		for _, kind := range order(i) {
			ready := filepath.Join(b.o.work, fmt.Sprintf("ready-%s-%d", kind, i))
			switch kind {
			case "client":
				pid, done, err := b.startHog(py, ready, size)
				if err != nil {
					return nil, err
				}
				if err := waitFile(ctx, ready); err != nil {
					return nil, err
				}
				t := time.Now()
				out, err := runCLI(d.home, b.o.cedana, "client", "dump", "-p", strconv.Itoa(pid), "-d", clientDir)
				el := time.Since(t).Seconds()
				if err != nil {
					return nil, err
				}
				client = append(client, el)
				<-done
				_ = os.Remove(out)
			case "daemon":
				id, _, err := d.runJob(b, "--name", fmt.Sprintf("hog-%d", i), "--", py, b.o.memhog, ready, size)
				if err != nil {
					return nil, err
				}
				if err := waitFile(ctx, ready); err != nil {
					return nil, err
				}
				t := time.Now()
				out, err := d.cli(b.o.cedana, "dump", "job", id, "-o", "json")
				el := time.Since(t).Seconds()
				if err != nil {
					return nil, err
				}
				daemon = append(daemon, el)
				var ck struct {
					ID          string  `json:"id"`
					Path        string  `json:"path"`
					DumpSeconds float64 `json:"dump_seconds"`
				}
				if err := json.Unmarshal([]byte(out), &ck); err == nil {
					daemonSelf = append(daemonSelf, ck.DumpSeconds)
					_ = os.Remove(ck.Path)
				}
			}
			logf("part c: run %d %s done", i+1, kind)
		}
	}
	mc, md := median(client), median(daemon)
	ratio := md / mc
	return []row{
		{part: "c", what: fmt.Sprintf("dump %d MiB process, standalone `client dump`: median of %d (min–max)", b.o.sizeMiB, len(client)),
			value: fmt.Sprintf("%.3f s (%.3f–%.3f)", mc, slices.Min(client), slices.Max(client)), bar: "", verdict: info},
		{part: "c", what: fmt.Sprintf("dump %d MiB process, `dump job` through the daemon: median of %d (min–max)", b.o.sizeMiB, len(daemon)),
			value: fmt.Sprintf("%.3f s (%.3f–%.3f); daemon's own figure %.3f s", md, slices.Min(daemon), slices.Max(daemon), median(daemonSelf)),
			bar:   "", verdict: info},
		{part: "c", what: "daemon / standalone (medians)", value: fmt.Sprintf("%.3f (%+.1f %%)", ratio, (ratio-1)*100),
			bar: "daemon ≤ 1.05 × standalone", verdict: verdictOf(ratio <= 1.05)},
	}, nil
}

// order alternates which kind goes first, so that drift (page cache,
// disk) does not favour one.
func order(i int) []string {
	if i%2 == 0 {
		return []string{"client", "daemon"}
	}
	return []string{"daemon", "client"}
}

// startHog starts the memory holder in its own session, stdio on
// /dev/null, and reaps it when it exits (done is closed then).
func (b *bench) startHog(py, ready, size string) (int, <-chan struct{}, error) {
	cmd := exec.Command(py, b.o.memhog, ready, size)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.track(cmd.Process.Pid)
	return cmd.Process.Pid, done, nil
}

// runCLI runs cedana with HOME set and returns its stdout.
func runCLI(home, bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+home)
	var errb strings.Builder
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("cedana %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// waitFile waits until path exists and is not empty.
func waitFile(ctx context.Context, path string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if st, err := os.Stat(path); err == nil && st.Size() > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within 60 s", path)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
