package container

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// runc asks CRIU to restore every container into an empty network
// namespace ("runc doesn't manage network devices"): only a loopback that
// is down. Whoever configured the namespace (CNI...) is expected to do it
// again from the bundle's prestart hooks, which runc runs at CRIU's
// setup-namespaces stage, before any socket comes back. Cedana does the
// same for what a runc container's namespace holds by itself: it records
// the loopback's state and addresses at dump time (container/network.json)
// and adds a prestart hook that puts them back at restore, so that
// listening and connected sockets find their addresses.

// networkEntry is the archive entry (below archive.ContainerPrefix)
// holding the recorded network configuration.
const networkEntry = "network.json"

// netnsConfig is network.json.
type netnsConfig struct {
	// LoopbackUp is whether lo was up.
	LoopbackUp bool `json:"loopback_up"`
	// Addresses are lo's addresses beyond 127.0.0.1/8 and ::1/128, in
	// CIDR form.
	Addresses []string `json:"addresses,omitempty"`
	// OtherLinks are interfaces Cedana does not restore (their owner
	// must set them up again).
	OtherLinks []string `json:"other_links,omitempty"`
}

// captureNetns records the loopback of pid's network namespace. It needs
// nsenter and ip (util-linux, iproute2).
func captureNetns(pid int) (*netnsConfig, error) {
	ns := fmt.Sprintf("--net=/proc/%d/ns/net", pid)
	links, err := exec.Command("nsenter", ns, "ip", "-o", "link", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("read the container's network interfaces (nsenter, ip): %w", err)
	}
	addrs, err := exec.Command("nsenter", ns, "ip", "-o", "addr", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("read the container's addresses (nsenter, ip): %w", err)
	}
	return parseNetns(string(links), string(addrs)), nil
}

// parseNetns reads `ip -o link show` and `ip -o addr show` output.
func parseNetns(links, addrs string) *netnsConfig {
	c := &netnsConfig{}
	for _, l := range strings.Split(links, "\n") {
		// 1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 ...
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		name := strings.TrimSuffix(f[1], ":")
		if i := strings.IndexByte(name, '@'); i >= 0 {
			name = name[:i]
		}
		if name == "lo" {
			flags := strings.Trim(f[2], "<>")
			for _, fl := range strings.Split(flags, ",") {
				if fl == "UP" {
					c.LoopbackUp = true
				}
			}
			continue
		}
		c.OtherLinks = append(c.OtherLinks, name)
	}
	for _, l := range strings.Split(addrs, "\n") {
		// 1: lo    inet 192.0.2.10/32 scope global lo\       valid_lft ...
		f := strings.Fields(l)
		if len(f) < 4 || f[1] != "lo" || (f[2] != "inet" && f[2] != "inet6") {
			continue
		}
		if f[3] == "127.0.0.1/8" || f[3] == "::1/128" {
			continue
		}
		c.Addresses = append(c.Addresses, f[3])
	}
	return c
}

// writeNetnsHook writes the script that restores cfg inside a network
// namespace, and returns the OCI prestart hook that runs it in the
// restored container's namespace (runc gives hooks the container's state,
// with its PID, on stdin).
func writeNetnsHook(cfg *netnsConfig, dir string) (map[string]any, error) {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# Written by cedana: the container's loopback as it was checkpointed.\nset -e\n")
	for _, a := range cfg.Addresses {
		if !safeCIDR(a) {
			return nil, fmt.Errorf("%w: bad address %q in %s", errUnsafeLayer, a, networkEntry)
		}
		fmt.Fprintf(&b, "ip addr add %s dev lo\n", a)
	}
	if cfg.LoopbackUp {
		b.WriteString("ip link set lo up\n")
	}
	script := filepath.Join(dir, "netns-restore.sh")
	if err := os.WriteFile(script, []byte(b.String()), 0o700); err != nil {
		return nil, err
	}
	return map[string]any{
		"path": "/bin/sh",
		"args": []string{"sh", "-c",
			`pid=$(sed -n 's/.*"pid":\([0-9][0-9]*\).*/\1/p'); exec nsenter --net=/proc/$pid/ns/net /bin/sh "$0"`, script},
	}, nil
}

// safeCIDR accepts only characters of IPv4/IPv6 addresses in CIDR form:
// the script is run as root.
func safeCIDR(s string) bool {
	addr, plen, ok := strings.Cut(s, "/")
	if !ok || addr == "" {
		return false
	}
	if n, err := strconv.Atoi(plen); err != nil || n < 0 || n > 128 {
		return false
	}
	for _, c := range addr {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// readNetnsConfig reads network.json from an extracted archive; nil when
// the archive has none.
func readNetnsConfig(dir string) (*netnsConfig, error) {
	data, err := os.ReadFile(filepath.Join(dir, "container", networkEntry))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var c netnsConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%s in the archive: %w", networkEntry, err)
	}
	return &c, nil
}

// addPrestartHook adds hook to an OCI configuration's prestart hooks.
func addPrestartHook(config []byte, hook map[string]any) ([]byte, error) {
	var spec map[string]any
	if err := json.Unmarshal(config, &spec); err != nil {
		return nil, err
	}
	hooks, _ := spec["hooks"].(map[string]any)
	if hooks == nil {
		hooks = map[string]any{}
		spec["hooks"] = hooks
	}
	pre, _ := hooks["prestart"].([]any)
	hooks["prestart"] = append(pre, hook)
	return json.MarshalIndent(spec, "", "\t")
}
