package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	sys := write(t, dir, "sys.json", `{"shared_storage": {"dump_storage_dir": "/sys-dir"}, "criu": {"path": "/sys/criu"}, "log_dir": "/sys-logs"}`)
	user := write(t, dir, "user.json", `{"shared_storage": {"dump_storage_dir": "/user-dir"}, "client": {"pid_wait": "3s"}}`)
	l, err := LoadFrom([]string{sys, user, filepath.Join(dir, "missing.json")},
		[]string{"CEDANA_CRIU_PATH=/env/criu", "CEDANA_CLIENT_CARRY_FILE_MAX_BYTES=1MiB", "OTHER=x"})
	if err != nil {
		t.Fatal(err)
	}
	if l.SharedStorage.DumpStorageDir != "/user-dir" {
		t.Errorf("user file should override system file: %q", l.SharedStorage.DumpStorageDir)
	}
	if l.CRIU.Path != "/env/criu" {
		t.Errorf("env should override files: %q", l.CRIU.Path)
	}
	if l.LogDir != "/sys-logs" {
		t.Errorf("system value lost: %q", l.LogDir)
	}
	if l.Client.PIDWait.Duration != 3*time.Second || l.Client.CarryFileMaxBytes != 1<<20 {
		t.Errorf("client = %+v", l.Client)
	}
	if len(l.Sources) != 4 {
		t.Errorf("sources = %v", l.Sources)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ body, want string }{
		{"{\n \"log_dir\": \"/x\",\n}", "line 3"},
		{`{"shared_storage": {"dump_dir": "/x"}}`, `unknown key "shared_storage.dump_dir"`},
		{`{"bogus": 1}`, `unknown key "bogus"`},
		{`{"criu": {"ghost_limit": "big"}}`, "ghost_limit"},
		{`{"client": {"pid_wait": "soon"}}`, "duration"},
		{`[1, 2]`, "JSON"},
	}
	for _, c := range cases {
		p := write(t, dir, "c.json", c.body)
		_, err := LoadFrom([]string{p}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%q: want error naming %q and the file, got %v", c.body, c.want, err)
		}
	}
	if _, err := LoadFrom(nil, []string{"CEDANA_CLIENT_LEAVE_RUNNING=maybe"}); err == nil || !strings.Contains(err.Error(), "CEDANA_CLIENT_LEAVE_RUNNING") {
		t.Errorf("bad env: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "64MiB": 64 << 20, "1G": 1 << 30, "2 kb": 2048} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "lots", "99999999999999999999T"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) succeeded", bad)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"shared_storage": {"dump_storage_dir": "/x"}, "client": {"pid_wait": "3s"}}`))
	f.Add([]byte(`{"criu": {"ghost_limit": 5}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "c.json")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _ = LoadFrom([]string{p}, nil) // must not panic
	})
}
