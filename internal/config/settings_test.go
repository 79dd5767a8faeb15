package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// sample returns, for a setting, a value that differs from its default
// and the JSON forms a file may write it in.
func sample(t *testing.T, s Setting, def string) (value string, jsonForms []string) {
	t.Helper()
	q := func(v string) string { b, _ := json.Marshal(v); return string(b) }
	switch {
	case s.Kind == "bool":
		b, _ := strconv.ParseBool(def)
		v := strconv.FormatBool(!b)
		return v, []string{v, q(v)}
	case s.Kind == "int":
		return "7", []string{"7", q("7")}
	case s.Kind == "size":
		return "3MiB", []string{q("3MiB"), q("3 mib"), "3145728"}
	case s.Kind == "duration":
		return "90s", []string{q("90s"), q("1m30s"), "90"}
	case s.Kind == "string, or off":
		return "off", []string{q("off"), q("OFF"), q("")}
	case strings.HasPrefix(s.Kind, "one of "):
		opts := strings.Split(strings.TrimPrefix(s.Kind, "one of "), ", ")
		v := opts[len(opts)-1]
		return v, []string{q(v)}
	case s.Kind == "string":
		v := "/x/" + s.Key
		return v, []string{q(v)}
	}
	t.Fatalf("%s: no sample for kind %q", s.Key, s.Kind)
	return "", nil
}

// fileFor writes a configuration file setting key to the JSON value v.
func fileFor(t *testing.T, key, v string) string {
	t.Helper()
	parts := strings.Split(key, ".")
	body := v
	for i := len(parts) - 1; i >= 0; i-- {
		body = "{" + strconv.Quote(parts[i]) + ": " + body + "}"
	}
	return write(t, t.TempDir(), "c.json", body)
}

// TestEverySettingEverySource: every setting takes the same values from a
// file, the environment and the command line, through its one parser, and
// refuses the same bad values in all three.
func TestEverySettingEverySource(t *testing.T) {
	all := Settings()
	if len(all) < 30 {
		t.Fatalf("only %d settings found", len(all))
	}
	def := Default()
	for _, s := range all {
		t.Run(s.Key, func(t *testing.T) {
			value, forms := sample(t, s, s.Get(&def))
			want := ""
			{
				l, err := LoadFrom(nil, nil, Override{Key: s.Key, Value: value, Flag: "--x"})
				if err != nil {
					t.Fatalf("flag: %v", err)
				}
				want = s.Get(&l.Config)
			}
			if want == s.Get(&def) && s.Kind != "string, or off" {
				t.Fatalf("the sample %q did not change the default %q", value, want)
			}
			l, err := LoadFrom(nil, []string{s.Env + "=" + value})
			if err != nil {
				t.Fatalf("env: %v", err)
			}
			if got := s.Get(&l.Config); got != want {
				t.Errorf("env %s=%s gives %q, the flag %q", s.Env, value, got, want)
			}
			for _, form := range forms {
				l, err := LoadFrom([]string{fileFor(t, s.Key, form)}, nil)
				if err != nil {
					t.Fatalf("file %s: %v", form, err)
				}
				if got := s.Get(&l.Config); got != want {
					t.Errorf("file %s: %s gives %q, the flag %q", s.Key, form, got, want)
				}
			}
			if s.Kind == "string" || s.Kind == "string, or off" {
				return
			}
			bad := "bogus"
			_, ferr := LoadFrom(nil, nil, Override{Key: s.Key, Value: bad})
			_, eerr := LoadFrom(nil, []string{s.Env + "=" + bad})
			_, jerr := LoadFrom([]string{fileFor(t, s.Key, strconv.Quote(bad))}, nil)
			if ferr == nil || eerr == nil || jerr == nil {
				t.Errorf("%q accepted: flag %v, env %v, file %v", bad, ferr, eerr, jerr)
			}
		})
	}
}

// TestMetricsAddrOff: the reported case: "off" from the environment used
// to reach net.Listen ("missing port").
func TestMetricsAddrOff(t *testing.T) {
	l, err := LoadFrom(nil, []string{"CEDANA_DAEMON_METRICS_ADDR=off"})
	if err != nil || l.Daemon.MetricsAddr != "" {
		t.Errorf("CEDANA_DAEMON_METRICS_ADDR=off: %q, %v", l.Daemon.MetricsAddr, err)
	}
	l, err = LoadFrom(nil, []string{"CEDANA_DAEMON_METRICS_ADDR=127.0.0.1:1"}, Override{Key: "daemon.metrics_addr", Value: "off"})
	if err != nil || l.Daemon.MetricsAddr != "" {
		t.Errorf("flag off over env: %q, %v", l.Daemon.MetricsAddr, err)
	}
}

// TestUntrustedFile: a file others can write is refused, whole, saying
// how to fix it; one only root or the user can write is read.
func TestUntrustedFile(t *testing.T) {
	body := `{"hooks": {"pre_dump": "touch /tmp/pwned"}, "criu": {"path": "/tmp/evil-criu"}}`
	dir := t.TempDir()
	p := write(t, dir, "c.json", body)
	if err := os.Chmod(p, 0o666); err != nil {
		t.Fatal(err)
	}
	l, err := LoadFrom([]string{p}, nil)
	var ue *UntrustedFileError
	if !asUntrusted(err, &ue) {
		t.Fatalf("a 0666 config file was read: %+v, %v", l, err)
	}
	if !strings.Contains(err.Error(), "chmod go-w "+p) || !strings.Contains(err.Error(), "0666") {
		t.Errorf("the refusal does not say how to fix it: %v", err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if l, err := LoadFrom([]string{p}, nil); err != nil || l.Hooks.PreDump == "" {
		t.Errorf("a 0644 file of ours: %v", err)
	}

	// A directory others can write: they could replace the file.
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	q := write(t, open, "c.json", body)
	if _, err := LoadFrom([]string{q}, nil); !asUntrusted(err, &ue) || !strings.Contains(err.Error(), "directory") {
		t.Errorf("a file in a 0777 directory was read: %v", err)
	}
	if err := os.Chmod(open, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFrom([]string{q}, nil); err != nil {
		t.Errorf("a file of ours in a sticky directory (like /tmp): %v", err)
	}

	// A file owned by someone else (needs root to arrange).
	if os.Getuid() == 0 {
		r := write(t, t.TempDir(), "c.json", body)
		if err := os.Chown(r, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadFrom([]string{r}, nil); !asUntrusted(err, &ue) || !strings.Contains(err.Error(), "65534") {
			t.Errorf("a file owned by another user was read: %v", err)
		}
	} else {
		t.Log("not root: cannot arrange a file owned by another user")
	}
}

func asUntrusted(err error, target **UntrustedFileError) bool {
	if err == nil {
		return false
	}
	e, ok := err.(*UntrustedFileError)
	if ok {
		*target = e
	}
	return ok
}
