package criu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// CheckItem is one line of a capability report.
type CheckItem struct {
	// Name identifies the item, e.g. "criu-version" or "pre-dump".
	Name string `json:"name"`
	// OK reports whether the capability is there.
	OK bool `json:"ok"`
	// Required items make checkpointing impossible when missing; the
	// others only disable a feature.
	Required bool `json:"required"`
	// Detail explains the result, and what to do when it is missing.
	Detail string `json:"detail"`
}

// Report is the result of Check.
type Report struct {
	CRIUPath    string      `json:"criu_path,omitempty"`
	CRIUVersion string      `json:"criu_version,omitempty"`
	Items       []CheckItem `json:"items"`
}

// Ready reports whether every required item is OK.
func (r *Report) Ready() bool {
	for _, it := range r.Items {
		if it.Required && !it.OK {
			return false
		}
	}
	return true
}

// Check inspects CRIU and the kernel features that matter to Cedana. It
// never fails: what is missing is reported as an item.
func (c *Client) Check(ctx context.Context) *Report {
	r := &Report{}
	add := func(name string, ok, required bool, format string, args ...any) {
		r.Items = append(r.Items, CheckItem{Name: name, OK: ok, Required: required, Detail: fmt.Sprintf(format, args...)})
	}

	path, err := c.Path()
	if err != nil {
		add("criu-binary", false, true, "%v", err)
		return r
	}
	r.CRIUPath = path
	add("criu-binary", true, true, "%s", path)

	v, err := c.Version()
	switch {
	case err != nil:
		add("criu-version", false, true, "%v", err)
		return r
	case v < MinVersion:
		r.CRIUVersion = FormatVersion(v)
		add("criu-version", false, true, "%s is too old for this kernel, need ≥ %s: run `make setup`", FormatVersion(v), FormatVersion(MinVersion))
	default:
		r.CRIUVersion = FormatVersion(v)
		add("criu-version", true, true, "%s (≥ %s)", FormatVersion(v), FormatVersion(MinVersion))
	}

	out, err := c.run(ctx, "check")
	if err != nil {
		add("criu-check", false, true, "`criu check` failed: %s", lastLines(out, 3))
	} else {
		add("criu-check", true, true, "`criu check` passed")
	}

	// Ask the CLI, not the RPC feature check: on kernels without
	// CONFIG_MEM_SOFT_DIRTY the RPC reports memory tracking as available
	// while `criu check --feature mem_dirty_track` fails and
	// `criu pre-dump --track-mem` refuses ("Tracking memory is not available").
	memTrack := c.featureOK(ctx, "mem_dirty_track")
	if memTrack {
		add("pre-dump", true, false, "soft-dirty memory tracking: incremental pre-dumps possible")
	} else {
		add("pre-dump", false, false, "no soft-dirty memory tracking (`criu check --feature mem_dirty_track` fails; CONFIG_MEM_SOFT_DIRTY): no incremental pre-dumps; dumps are stop-and-copy")
	}
	lazy := c.featureOK(ctx, "uffd-noncoop")
	if lazy {
		add("lazy-pages", true, false, "userfaultfd available: lazy (post-copy) restore possible")
	} else {
		add("lazy-pages", false, false, "no non-cooperative userfaultfd: lazy (post-copy) restore unavailable")
	}
	add("migration", true, false, "%s", migrationModes(memTrack, lazy, pipeMaxSize()))

	if _, err := c.run(ctx, "check", "--feature", "network_lock_nftables"); err == nil {
		add("network-lock", true, false, "nftables (built into CRIU): TCP connections can be dumped")
	} else if _, lerr := exec.LookPath("iptables"); lerr == nil {
		add("network-lock", true, false, "iptables: TCP connections can be dumped")
	} else {
		add("network-lock", false, false, "neither nftables support in CRIU nor iptables: processes with TCP connections cannot be dumped")
	}

	if _, err := os.Stat("/proc/self/ns/pid"); err == nil {
		add("pid-namespaces", true, false, "PID namespaces available")
	} else {
		add("pid-namespaces", false, false, "no PID namespaces: restored processes must get their old PIDs back")
	}
	if os.Geteuid() == 0 {
		add("root", true, true, "running as root")
	} else {
		add("root", false, true, "not root: CRIU needs root (run with sudo)")
	}
	return r
}

// featureOK reports whether `criu check --feature NAME` passes.
func (c *Client) featureOK(ctx context.Context, name string) bool {
	_, err := c.run(ctx, "check", "--feature", name)
	return err == nil
}

// SupportsMemTrack reports whether incremental pre-dumps can work here.
func (c *Client) SupportsMemTrack() bool {
	return c.featureOK(context.Background(), "mem_dirty_track")
}

// lazyPipeBytes is the pipe size CRIU's page server asks for when it sends
// pages to a remote lazy-pages daemon (FACTS.md: "page-pipe: tee: 65536:
// Operation not permitted" below it, without CAP_SYS_RESOURCE).
const lazyPipeBytes = 4 << 20

// pipeMaxSize reads fs.pipe-max-size (0 if unreadable).
func pipeMaxSize() int {
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// migrationModes says which ways of moving a running process this machine
// allows: stop-and-copy always; pre-copy with soft-dirty tracking; lazy
// (post-copy) with userfaultfd, across machines only with pipes CRIU can
// grow to 4 MiB.
func migrationModes(memTrack, lazy bool, pipeMax int) string {
	modes := []string{"stop-and-copy"}
	if memTrack {
		modes = append(modes, "iterative pre-copy")
	}
	var notes []string
	switch {
	case !lazy:
		notes = append(notes, "no lazy (post-copy) migration: no userfaultfd")
	case pipeMax >= lazyPipeBytes || hasCapSysResource():
		modes = append(modes, "lazy (post-copy)")
	default:
		modes = append(modes, "lazy (post-copy) on this machine only")
		notes = append(notes, fmt.Sprintf("lazy migration to another machine needs fs.pipe-max-size ≥ %d (now %d): `sysctl -w fs.pipe-max-size=%d`", lazyPipeBytes, pipeMax, lazyPipeBytes))
	}
	if !memTrack {
		notes = append(notes, "no pre-copy: no soft-dirty tracking")
	}
	s := "possible: " + strings.Join(modes, ", ")
	if len(notes) > 0 {
		s += "; " + strings.Join(notes, "; ")
	}
	return s
}

// hasCapSysResource reports whether this process may raise pipe sizes past
// fs.pipe-max-size (CAP_SYS_RESOURCE, bit 24 of CapEff).
func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<24) != 0
		}
	}
	return false
}

// run runs the CRIU CLI with a timeout and returns its combined output.
func (c *Client) run(ctx context.Context, args ...string) (string, error) {
	p, err := c.Path()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var buf bytes.Buffer
	cmd := exec.CommandContext(ctx, p, args...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err = cmd.Run()
	return buf.String(), err
}

func lastLines(s string, n int) string {
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" && !isHarmless(l) {
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, " | ")
}
