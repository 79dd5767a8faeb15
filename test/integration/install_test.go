package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstall: `make install DESTDIR=… PREFIX=…` lays out the binary,
// the systemd unit (pointing at the installed binary), bash, zsh and fish
// completions and a man page per command, and the installed binary runs.
func TestMakeInstall(t *testing.T) {
	for _, tool := range []string{"make", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			if inCI() {
				t.Fatalf("%s not found", tool)
			}
			t.Skipf("%s not found: cannot run make install", tool)
		}
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"/usr/local", "/opt/cedana"} {
		dest := t.TempDir()
		bin := filepath.Join(t.TempDir(), "cedana") // leave the repository's bin/ alone
		cmd := exec.Command("make", "--no-print-directory", "-C", repo, "install", "DESTDIR="+dest, "PREFIX="+prefix, "BIN="+bin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make install PREFIX=%s: %v\n%s", prefix, err, out)
		}
		root := filepath.Join(dest, prefix)
		for _, f := range []struct {
			path string
			mode os.FileMode
			has  string
		}{
			{"bin/cedana", 0o755, ""},
			{"lib/systemd/system/cedana.service", 0o644, "ExecStart=" + prefix + "/bin/cedana daemon start"},
			{"share/bash-completion/completions/cedana", 0o644, "cedana"},
			{"share/zsh/site-functions/_cedana", 0o644, "#compdef cedana"},
			{"share/fish/vendor_completions.d/cedana.fish", 0o644, "complete -c cedana"},
			{"share/man/man1/cedana.1", 0o644, ".TH \"CEDANA\" \"1\""},
			{"share/man/man1/cedana-client-dump.1", 0o644, "<process_name>_<UTC time>"},
			{"share/man/man1/cedana-daemon-start.1", 0o644, "--metrics-addr"},
		} {
			p := filepath.Join(root, f.path)
			st, err := os.Stat(p)
			if err != nil {
				t.Errorf("PREFIX=%s: %v", prefix, err)
				continue
			}
			if st.Mode().Perm() != f.mode {
				t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), f.mode)
			}
			if f.has != "" {
				b, _ := os.ReadFile(p)
				if !strings.Contains(string(b), f.has) {
					t.Errorf("%s does not contain %q", p, f.has)
				}
			}
		}
		if _, err := os.Stat(filepath.Join(root, "share/man/man1/cedana-gen-man.1")); err == nil {
			t.Error("a man page for the hidden gen-man command")
		}
		out, err := exec.Command(filepath.Join(root, "bin/cedana"), "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "cedana version") {
			t.Errorf("the installed binary: %v, %s", err, out)
		}
	}
}
