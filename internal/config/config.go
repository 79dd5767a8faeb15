// Package config loads Cedana's configuration.
//
// Sources, from lowest to highest precedence:
//
//  1. built-in defaults (Default);
//  2. the system file /etc/cedana/cedana_config.json;
//  3. the user file ~/.cedana/cedana_config.json;
//  4. CEDANA_* environment variables, one per key: the key's JSON path in
//     upper case joined by "_", e.g. CEDANA_SHARED_STORAGE_DUMP_STORAGE_DIR;
//  5. command-line flags (applied by the caller).
//
// Files are strict: invalid JSON is reported with its line and column, and
// an unknown key with its full path, so that a typo never silently falls
// back to a default.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
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
	// MetricsAddr serves Prometheus /metrics; empty turns it off.
	MetricsAddr string `json:"metrics_addr"`
	// TCPAddr, if set, also serves the API on TCP; it requires TokenFile
	// or TLS client certificates.
	TCPAddr string `json:"tcp_addr"`
	// TokenFile holds the bearer token TCP clients must present.
	TokenFile string `json:"token_file"`
	// TLSCert and TLSKey are the server's certificate; with TLSClientCA,
	// TCP clients must present a certificate signed by it.
	TLSCert     string `json:"tls_cert"`
	TLSKey      string `json:"tls_key"`
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
	NetworkLock string `json:"network_lock"`
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

// UnmarshalJSON reads "10s" (or a number of seconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err2 := json.Unmarshal(b, &secs); err2 != nil {
			return fmt.Errorf("want a duration such as \"10s\"")
		}
		d.Duration = time.Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as \"10s\": %v", err)
	}
	d.Duration = v
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
		Policy: Policy{Keep: 5, MaxRestores: 3},
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

// Load reads the configuration from the default locations.
func Load() (*Loaded, error) {
	return LoadFrom([]string{SystemFile, UserFile()}, os.Environ())
}

// LoadFrom applies defaults, then each existing file of files in order,
// then the CEDANA_* variables of env.
func LoadFrom(files []string, env []string) (*Loaded, error) {
	l := &Loaded{Config: Default()}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read config %s: %w", f, err)
		}
		if err := apply(&l.Config, data); err != nil {
			return nil, fmt.Errorf("config %s: %w", f, err)
		}
		l.Sources = append(l.Sources, f)
	}
	applied, err := applyEnv(&l.Config, env)
	if err != nil {
		return nil, err
	}
	l.Sources = append(l.Sources, applied...)
	return l, nil
}

// apply overlays one JSON document on c, refusing unknown keys.
func apply(c *Config, data []byte) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		return describeJSONError(data, err)
	}
	if err := checkKeys(raw, reflect.TypeOf(Config{}), ""); err != nil {
		return err
	}
	if err := json.Unmarshal(data, c); err != nil {
		return describeJSONError(data, err)
	}
	return nil
}

// checkKeys reports the first key of raw that t has no field for.
func checkKeys(raw map[string]any, t reflect.Type, prefix string) error {
	fields := jsonFields(t)
	for k, v := range raw {
		f, ok := fields[k]
		if !ok {
			return fmt.Errorf("unknown key %q (known keys here: %s)", prefix+k, strings.Join(sortedKeys(fields), ", "))
		}
		if sub, ok := v.(map[string]any); ok && f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(Duration{}) {
			if err := checkKeys(sub, f.Type, prefix+k+"."); err != nil {
				return err
			}
		}
	}
	return nil
}

func jsonFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out[name] = f
		}
	}
	return out
}

func sortedKeys(m map[string]reflect.StructField) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}

// describeJSONError turns a decoding error into one with line and column.
func describeJSONError(data []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		line, col := position(data, syn.Offset)
		return fmt.Errorf("invalid JSON at line %d, column %d: %v", line, col, syn)
	case errors.As(err, &typ):
		line, col := position(data, typ.Offset)
		return fmt.Errorf("line %d, column %d: key %q wants a %s, not a JSON %s", line, col, typ.Field, typ.Type, typ.Value)
	}
	return fmt.Errorf("invalid value: %v", err)
}

func position(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line = 1 + bytes.Count(data[:off], []byte("\n"))
	col = int(off) - bytes.LastIndexByte(data[:off], '\n')
	return line, col
}

// applyEnv applies CEDANA_* variables and returns their names.
func applyEnv(c *Config, env []string) ([]string, error) {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, "CEDANA_") {
			vars[k] = v
		}
	}
	var applied []string
	err := walk(reflect.ValueOf(c).Elem(), "CEDANA", func(name string, f reflect.Value) error {
		v, ok := vars[name]
		if !ok {
			return nil
		}
		if err := setValue(f, v); err != nil {
			return fmt.Errorf("environment variable %s=%q: %w", name, v, err)
		}
		applied = append(applied, name)
		return nil
	})
	return applied, err
}

// walk calls fn for every leaf field of v with its env variable name.
func walk(v reflect.Value, prefix string, fn func(string, reflect.Value) error) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		full := prefix + "_" + strings.ToUpper(name)
		f := v.Field(i)
		if f.Kind() == reflect.Struct && f.Type() != reflect.TypeOf(Duration{}) {
			if err := walk(f, full, fn); err != nil {
				return err
			}
			continue
		}
		if err := fn(full, f); err != nil {
			return err
		}
	}
	return nil
}

func setValue(f reflect.Value, s string) error {
	switch f.Kind() {
	case reflect.String:
		f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("want true or false")
		}
		f.SetBool(b)
	case reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("want a whole number")
		}
		f.SetInt(int64(n))
	case reflect.Int64:
		n, err := ParseSize(s)
		if err != nil {
			return err
		}
		f.SetInt(n)
	case reflect.Struct: // Duration
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("want a duration such as 10s")
		}
		f.Set(reflect.ValueOf(Duration{d}))
	default:
		return fmt.Errorf("unsupported type %s", f.Type())
	}
	return nil
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
