package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// toucher is a Python job holding SIZE MiB of random memory that rewrites
// a contiguous 1 % of it in place every PERIOD seconds; it writes "ready"
// to argv[1] once its memory is in place.
const toucher = `
import os, sys, time
N = int(sys.argv[2]) << 20
period = float(sys.argv[3])
mem = bytearray(N)
view = memoryview(mem)
rnd = open("/dev/urandom", "rb", buffering=0)
def fill(off, n):
    while n > 0:
        k = rnd.readinto(view[off:off + min(n, 1 << 24)])
        off, n = off + k, n - k
fill(0, N)
with open(sys.argv[1], "w") as f:
    f.write("ready")
step = N // 100
i = 0
while True:
    time.sleep(period)
    fill((i * 37 * 4096 * 1024) % (N - step), step)
    i += 1
`

var storedRE = regexp.MustCompile(`stored (\d+) new bytes`)

// dedup is part (d): a job of dedupMiB that rewrites 1 % of its memory per
// period, checkpointed every period through the daemon (deduplicated, the
// default): the bytes each checkpoint after the first stored, against the
// job's memory (bar ≤ 5 %); then the restore of its newest checkpoint
// from the deduplicated store against the restore of the same checkpoint
// exported as a self-contained archive, alternately, with `client restore`
// (bar ≤ 1.1×).
func (b *bench) dedup(ctx context.Context) ([]row, error) {
	py, err := exec.LookPath("python3")
	if err != nil {
		return nil, fmt.Errorf("python3: %w", err)
	}
	script := filepath.Join(b.o.work, "toucher.py")
	if err := os.WriteFile(script, []byte(toucher), 0o600); err != nil {
		return nil, err
	}
	d, err := b.startDaemon(ctx, "dedup", filepath.Join(b.o.work, "dedup-state"), "", nil)
	if err != nil {
		return nil, err
	}
	ready := filepath.Join(b.o.work, "dedup-ready")
	period := "5"
	id, _, err := d.runJob(b, "--name", "toucher", "--", py, script, ready, strconv.Itoa(b.o.dedupMiB), period)
	if err != nil {
		return nil, err
	}
	if err := waitFile(ctx, ready); err != nil {
		return nil, err
	}
	if _, err := d.cli(b.o.cedana, "policy", id, "--checkpoint-every", period+"s", "--keep", "100"); err != nil {
		return nil, err
	}
	var stored []float64
	for len(stored) < b.o.dedupCkpts {
		if err := sleepCtx(ctx, time.Second); err != nil {
			return nil, err
		}
		out, err := d.cli(b.o.cedana, "events", id, "-o", "json")
		if err != nil {
			return nil, err
		}
		var es []struct{ Type, Message string }
		if err := json.Unmarshal([]byte(out), &es); err != nil {
			return nil, err
		}
		stored = stored[:0]
		for _, e := range es {
			if m := storedRE.FindStringSubmatch(e.Message); e.Type == "checkpointed" && m != nil {
				n, _ := strconv.ParseFloat(m[1], 64)
				stored = append(stored, n)
			}
		}
		logf("part d: %d checkpoints", len(stored))
	}
	if _, err := d.cli(b.o.cedana, "policy", id, "--checkpoint-every", "1h"); err != nil {
		return nil, err
	}
	out, err := d.cli(b.o.cedana, "checkpoints", id, "-o", "json")
	if err != nil {
		return nil, err
	}
	var cks []struct{ ID, Path, State string }
	if err := json.Unmarshal([]byte(out), &cks); err != nil || len(cks) == 0 {
		return nil, fmt.Errorf("checkpoints -o json: %v: %s", err, out)
	}
	if _, err := d.cli(b.o.cedana, "kill", id); err != nil {
		return nil, err
	}
	newest := cks[0].Path
	for _, c := range cks {
		if c.State == "complete" {
			newest = c.Path
			break
		}
	}
	zip := filepath.Join(b.o.work, "exported.zip")
	if _, err := d.cli(b.o.cedana, "checkpoint", "export", newest, zip); err != nil {
		return nil, err
	}
	var fromDedup, fromZip []float64
	for i := range b.o.runs {
		for _, kind := range order(i) {
			src := newest
			if kind == "client" { // order's names: "client" = the self-contained archive
				src = zip
			}
			t := time.Now()
			out, err := runCLI(d.home, b.o.cedana, "client", "restore", src)
			el := time.Since(t).Seconds()
			if err != nil {
				return nil, err
			}
			pid, _ := strconv.Atoi(strings.TrimSpace(out))
			if pid > 0 {
				b.track(pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
				waitExit(pid)
			}
			if kind == "client" {
				fromZip = append(fromZip, el)
			} else {
				fromDedup = append(fromDedup, el)
			}
		}
		logf("part d: restore run %d done", i+1)
	}
	mem := float64(b.o.dedupMiB << 20)
	later := stored[1:]
	ratio := median(fromDedup) / median(fromZip)
	return []row{
		{part: "d", what: fmt.Sprintf("%d MiB job rewriting 1 %% per %s s, checkpointed as often: first checkpoint stored", b.o.dedupMiB, period),
			value: fmt.Sprintf("%.0f MiB", stored[0]/(1<<20)), verdict: info},
		{part: "d", what: fmt.Sprintf("each later checkpoint stored: median of %d (min–max)", len(later)),
			value: fmt.Sprintf("%.1f MiB = %.2f %% of memory (%.1f–%.1f MiB)", median(later)/(1<<20), 100*median(later)/mem,
				slices.Min(later)/(1<<20), slices.Max(later)/(1<<20)),
			bar: "≤ 5 % of memory", verdict: verdictOf(median(later) <= 0.05*mem)},
		{part: "d", what: fmt.Sprintf("`client restore` of the newest checkpoint, deduplicated: median of %d (min–max)", len(fromDedup)),
			value: fmt.Sprintf("%.3f s (%.3f–%.3f)", median(fromDedup), slices.Min(fromDedup), slices.Max(fromDedup)), verdict: info},
		{part: "d", what: fmt.Sprintf("the same, exported as a self-contained archive: median of %d (min–max)", len(fromZip)),
			value: fmt.Sprintf("%.3f s (%.3f–%.3f)", median(fromZip), slices.Min(fromZip), slices.Max(fromZip)), verdict: info},
		{part: "d", what: "deduplicated / self-contained (medians)", value: fmt.Sprintf("%.3f", ratio),
			bar: "≤ 1.1×", verdict: verdictOf(ratio <= 1.1)},
	}, nil
}

// waitExit waits up to 10 s for pid to be gone or a zombie.
func waitExit(pid int) {
	for range 500 {
		st, err := readStat(pid)
		if err != nil || st.state == 'Z' {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
