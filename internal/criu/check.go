package criu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
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

	f, ferr := c.features()
	if ferr != nil {
		add("pre-dump", false, false, "feature check failed: %v", ferr)
	} else {
		if f.GetMemTrack() {
			add("pre-dump", true, false, "soft-dirty memory tracking: incremental pre-dumps possible")
		} else {
			add("pre-dump", false, false, "no soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY): no incremental pre-dumps; dumps are stop-and-copy")
		}
		if f.GetLazyPages() {
			add("lazy-pages", true, false, "userfaultfd available: lazy (post-copy) restore possible")
		} else {
			add("lazy-pages", false, false, "no userfaultfd: lazy (post-copy) restore unavailable")
		}
	}

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

// features asks CRIU which optional features work here.
func (c *Client) features() (*rpc.CriuFeatures, error) {
	g, err := c.swrk()
	if err != nil {
		return nil, err
	}
	return g.FeatureCheck(&rpc.CriuFeatures{MemTrack: ptr(true), LazyPages: ptr(true)})
}

// SupportsMemTrack reports whether incremental pre-dumps can work here.
func (c *Client) SupportsMemTrack() bool {
	f, err := c.features()
	return err == nil && f.GetMemTrack()
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
