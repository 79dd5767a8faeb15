// Package config loads Cedana's configuration.
//
// Sources, from lowest to highest precedence:
//
//  1. built-in defaults (Default);
//  2. the system file /etc/cedana/cedana_config.json;
//  3. the user file ~/.cedana/cedana_config.json;
//  4. CEDANA_* environment variables, one per key: the key's JSON path in
//     upper case joined by "_", e.g. CEDANA_SHARED_STORAGE_DUMP_STORAGE_DIR;
//  5. command-line flags, passed to Load as Overrides.
//
// Every setting has one parser (see Settings), used for all three kinds of
// source, so a value accepted in a file is accepted in the environment and
// on the command line too ("off" for daemon.metrics_addr, "64MiB" for a
// size, "10s" or 10 for a duration).
//
// Files are strict: invalid JSON is reported with its line and column, and
// an unknown key with its full path, so that a typo never silently falls
// back to a default. A file that someone other than root and the invoking
// user could have written is refused (see CheckTrusted): it could name a
// hook or a CRIU binary, which run as root.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config is the whole configuration. Every field has a JSON key; the env
// variable for a key is derived from it (see the package doc).
type Config struct {
	SharedStorage SharedStorage `json:"shared_storage"`
	CRIU          CRIU          `json:"criu"`
	Client        Client        `json:"client"`
	// LogDir receives CRIU's logs, one per operation.
	LogDir string `json:"log_dir"`
	// StagingDir holds CRIU images while an archive is written or read.
	// Empty: /dev/shm when it has room, else next to the archive.
	StagingDir string `json:"staging_dir"`
	// Daemon configures `cedana daemon start` and how the CLI reaches it.
	Daemon Daemon `json:"daemon"`
	// Policy is the default policy of new jobs.
	Policy Policy `json:"policy"`
	// Hooks are scripts run around dumps and restores.
	Hooks Hooks `json:"hooks"`
	// TLS is how the CLI reaches a daemon's TCP listener.
	TLS ClientTLS `json:"tls"`
	// Storage is where checkpoint archives live (see storage.go).
	Storage Storage `json:"storage"`
	// Cluster joins the daemon to other daemons over NATS JetStream
	// (docs/cluster.md).
	Cluster Cluster `json:"cluster"`
	// Templates configures warm templates and their clones.
	Templates Templates `json:"templates"`
}

// Templates configures warm templates and their clones.
type Templates struct {
	// NetnsPool is how many network namespaces (veth pair, address and
	// routes set up) the daemon keeps ready for clones of templates that
	// listen on TCP ports, so that a clone does not make its own while it
	// starts. It fills once such a template is made or cloned; 0 (the
	// default) turns it off. At most 64. Off by default until it has more
	// runs behind it: with it on, a clone was left unreachable at its
	// address (1 in 4 runs of two daemons cloning side by side), most
	// likely the clone bridge's MAC changing as veths came and went
	// (fixed: the bridge now has a fixed address; 0 in 16 such runs
	// since). It saves each clone ~15 ms.
	NetnsPool int `json:"netns_pool"`
}

// Cluster configures cluster mode. The daemon runs as a cluster node when
// Node, NATSURLs or NATSListen is set.
type Cluster struct {
	// Node is this node's name, unique in the cluster ("" = the hostname
	// once cluster mode is on).
	Node string `json:"node"`
	// NATSURLs are the NATS servers, comma-separated
	// ("nats://user:pass@host:4222,tls://host2:4222"). Empty: the daemon
	// runs an embedded NATS server with JetStream in its state directory.
	NATSURLs string `json:"nats_urls"`
	// NATSListen is the embedded server's client address (default: a free
	// port on 127.0.0.1), for other daemons to join it.
	NATSListen string `json:"nats_listen"`
	// NATSCreds is a NATS credentials file (JWT and seed) for NATSURLs.
	NATSCreds string `json:"nats_creds"`
	// NATSTokenFile holds the token clients of the embedded server must
	// present; required when NATSListen is not a loopback address.
	NATSTokenFile string `json:"nats_token_file"`
	// CA verifies the servers of tls:// URLs ("" = the system's roots).
	CA string `json:"ca"`
	// NodeTimeout: a node without a heartbeat for this long is down.
	NodeTimeout Duration `json:"node_timeout"`
	// Replicas of the cluster's buckets (0: 3 on a NATS cluster, 1 on a
	// single server).
	Replicas int `json:"replicas"`
	// Transfer is how a migration moves the archive: "stream" (straight
	// from the source over NATS, the default) or "object-store" (through
	// the cluster's JetStream object store cedana_archives).
	Transfer string `json:"transfer" setting:"enum=stream,object-store"`
}

// Enabled reports whether the daemon runs as a cluster node.
func (c Cluster) Enabled() bool { return c.Node != "" || c.NATSURLs != "" || c.NATSListen != "" }

// ClientTLS is the CLI's side of the daemon's TCP listener (--address
// host:port), which speaks only TLS.
type ClientTLS struct {
	// CA verifies the daemon's certificate; empty: the system's roots.
	CA string `json:"ca"`
	// Cert and Key are the client's certificate, for a daemon with
	// daemon.tls_client_ca.
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// Daemon configures the daemon.
type Daemon struct {
	// Socket is the unix socket of the gRPC API.
	Socket string `json:"socket"`
	// SocketGroup, if set, may also use the socket (mode 0660).
	SocketGroup string `json:"socket_group"`
	// StateDir holds the state store and job logs.
	StateDir string `json:"state_dir"`
	// CheckpointDir holds jobs' archives; empty: StateDir/checkpoints.
	CheckpointDir string `json:"checkpoint_dir"`
	// RuncRoot is runc's state directory for the runc containers the
	// daemon manages, as runc --root (empty: runc's default, /run/runc).
	RuncRoot string `json:"runc_root"`
	// MetricsAddr serves Prometheus /metrics; empty (or "off" in any
	// source) turns it off.
	MetricsAddr string `json:"metrics_addr" setting:"off"`
	// TCPAddr, if set, also serves the API on TCP. It requires TLSCert and
	// TLSKey (TCP is served only over TLS), and TokenFile or TLSClientCA
	// (or both) for authentication.
	TCPAddr string `json:"tcp_addr"`
	// TokenFile holds the bearer token TCP clients must present.
	TokenFile string `json:"token_file"`
	// TLSCert and TLSKey are the server's certificate and key (PEM) for
	// the TCP listener.
	TLSCert string `json:"tls_cert"`
	TLSKey  string `json:"tls_key"`
	// TLSClientCA, if set, makes TCP clients present a certificate
	// signed by it.
	TLSClientCA string `json:"tls_client_ca"`
	// DrainOnSIGTERM checkpoints and stops every running job when the
	// daemon receives SIGTERM (the preemption case).
	DrainOnSIGTERM bool `json:"drain_on_sigterm"`
	// ShutdownGrace bounds how long that drain may take.
	ShutdownGrace Duration `json:"shutdown_grace"`
	// RestoreBackoff is the delay before the first automatic restore; it
	// doubles with each further one.
	RestoreBackoff Duration `json:"restore_backoff"`
}

// Policy is the default policy of new jobs; a job's own flags override it.
type Policy struct {
	CheckpointEvery  Duration `json:"checkpoint_every"`
	Keep             int      `json:"keep"`
	KeepBytes        int64    `json:"keep_bytes"`
	RestoreOnFailure bool     `json:"restore_on_failure"`
	MaxRestores      int      `json:"max_restores"`
	// SkipUnchanged: "safe" (default), "always" or "never"; see
	// docs/periodic.md.
	SkipUnchanged string `json:"skip_unchanged"`
	// Failover: in cluster mode, whether a job whose node is lost is
	// restored on another node. "auto" (default): when the job has
	// restore_on_failure and its checkpoints go to shared storage
	// (storage.backend other than local); "off": never (the job is marked
	// lost). See docs/cluster.md.
	Failover string `json:"failover" setting:"enum=auto,off"`
}

// Hooks are shell commands run around dumps and restores.
type Hooks struct {
	PreDump     string `json:"pre_dump"`
	PostDump    string `json:"post_dump"`
	PreRestore  string `json:"pre_restore"`
	PostRestore string `json:"post_restore"`
}

// SharedStorage says where checkpoints go.
type SharedStorage struct {
	// DumpStorageDir is the default directory for `client dump` (-d).
	DumpStorageDir string `json:"dump_storage_dir"`
}

// CRIU configures the CRIU binary and defaults for its options.
type CRIU struct {
	// Path of the criu binary; empty means the one on PATH.
	Path string `json:"path"`
	// NetworkLock is "nftables", "iptables" or "skip"; empty: nftables.
	NetworkLock string `json:"network_lock" setting:"enum=nftables,iptables,skip"`
	// GhostLimit is the largest deleted-but-open file to copy, in bytes.
	GhostLimit int64 `json:"ghost_limit"`
	// Stream moves memory pages between CRIU and the archive through
	// pipes (criu --stream) instead of staging files.
	Stream bool `json:"stream"`
	// KeepLogs is how many operations' CRIU work directories (logs) are
	// kept in log_dir, newest first; 0 keeps them all.
	KeepLogs int `json:"keep_logs"`
	// MaxLogAge removes CRIU work directories older than this; 0 never.
	MaxLogAge Duration `json:"max_log_age"`
}

// Client holds defaults for `cedana client`.
type Client struct {
	// LeaveRunning keeps processes running after a dump.
	LeaveRunning bool `json:"leave_running"`
	// CarryFileMaxBytes: files open for writing up to this size travel in
	// the archive. 0 disables carrying files.
	CarryFileMaxBytes int64 `json:"carry_file_max_bytes"`
	// CarryTotalMaxBytes bounds the total of carried files per archive.
	CarryTotalMaxBytes int64 `json:"carry_total_max_bytes"`
	// PIDWait is how long a restore waits for the old PIDs to be free.
	PIDWait Duration `json:"pid_wait"`
}

// Duration is a time.Duration written as "10s" in JSON and env.
type Duration struct{ time.Duration }

// MarshalJSON writes the duration as a string such as "10s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads "10s" or a number of seconds, as ParseDuration.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case float64:
		s = strconv.FormatFloat(v, 'f', -1, 64)
	default:
		return fmt.Errorf("want a duration such as \"10s\"")
	}
	p, err := ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = p
	return nil
}

// Default returns the built-in configuration.
func Default() Config {
	home := homeDir()
	return Config{
		SharedStorage: SharedStorage{DumpStorageDir: filepath.Join(home, ".cedana", "dumps")},
		LogDir:        filepath.Join(home, ".cedana", "logs"),
		CRIU:          CRIU{Stream: true, KeepLogs: 50},
		Client: Client{
			CarryFileMaxBytes:  16 << 20,
			CarryTotalMaxBytes: 64 << 20,
			PIDWait:            Duration{10 * time.Second},
		},
		Daemon: Daemon{
			Socket:         "/run/cedana/cedana.sock",
			StateDir:       "/var/lib/cedana",
			MetricsAddr:    "127.0.0.1:9464",
			DrainOnSIGTERM: true,
			ShutdownGrace:  Duration{30 * time.Second},
			RestoreBackoff: Duration{time.Second},
		},
		Policy:    Policy{Keep: 5, MaxRestores: 3, Failover: "auto"},
		Storage:   Storage{Dedup: true},
		Cluster:   Cluster{NodeTimeout: Duration{10 * time.Second}},
		Templates: Templates{NetnsPool: 0},
	}
}

// SystemFile is the machine-wide configuration file.
const SystemFile = "/etc/cedana/cedana_config.json"

// UserFile returns the path of the user's configuration file.
func UserFile() string { return filepath.Join(homeDir(), ".cedana", "cedana_config.json") }

func homeDir() string {
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		return h
	}
	return "/root"
}

// Loaded is a configuration with where it came from.
type Loaded struct {
	Config
	// Sources lists the files and variables that were applied, in order.
	Sources []string `json:"-"`
}

// Load reads the configuration from the default locations, then applies
// the command line's overrides.
func Load(flags ...Override) (*Loaded, error) {
	return LoadFrom([]string{SystemFile, UserFile()}, os.Environ(), flags...)
}

// LoadFrom applies defaults, then each existing file of files in order,
// then the CEDANA_* variables of env, then flags. A file that is not
// trusted (CheckTrusted) is refused.
func LoadFrom(files []string, env []string, flags ...Override) (*Loaded, error) {
	l := &Loaded{Config: Default()}
	set := Settings()
	for _, f := range files {
		data, err := readTrusted(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := applyFile(&l.Config, set, data); err != nil {
			return nil, fmt.Errorf("config %s: %w", f, err)
		}
		l.Sources = append(l.Sources, f)
	}
	applied, err := applyEnv(&l.Config, set, env)
	if err != nil {
		return nil, err
	}
	l.Sources = append(l.Sources, applied...)
	for _, o := range flags {
		s, ok := lookup(set, o.Key)
		if !ok {
			return nil, fmt.Errorf("no setting %q", o.Key)
		}
		if err := s.set(&l.Config, o.Value); err != nil {
			return nil, fmt.Errorf("%s %q: %w", o.Source(), o.Value, err)
		}
		l.Sources = append(l.Sources, o.Source())
	}
	return l, nil
}

// ParseSize reads a byte count: a plain number or one with a unit
// (K, M, G, T; KiB, MiB, GiB, TiB; KB, MB, GB meaning the binary units too).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10},
		{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10},
		{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.m
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("want a size such as 1048576 or 64MiB, not %q", s)
	}
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}

// JSON renders the configuration as indented JSON.
func (c Config) JSON() string {
	b, _ := json.MarshalIndent(c, "", "  ")
	return string(b)
}
