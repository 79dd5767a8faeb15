package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cedana/cedana/internal/config"
)

// TestUsageErrorsAreTyped: command-line mistakes exit 2, found by type;
// an EINVAL from the system ("invalid argument") is an operation failure.
func TestUsageErrorsAreTyped(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	einval := fmt.Errorf("ioctl /dev/x: %w", syscall.EINVAL)
	if !strings.Contains(einval.Error(), "invalid argument") {
		t.Fatalf("EINVAL reads %q", einval)
	}
	if got := exitCode(einval); got != ExitFailed {
		t.Errorf("EINVAL from the system: exit %d, want %d", got, ExitFailed)
	}
	if got := exitCode(fmt.Errorf("unknown flag: a CRIU message")); got != ExitFailed {
		t.Errorf("an error that merely reads like a usage error: exit %d, want %d", got, ExitFailed)
	}
	for _, args := range [][]string{
		{"bogus"},
		{"--no-such-flag"},
		{"daemon", "bogus"},
		{"client", "dump"},                     // required -p missing
		{"client", "dump", "-p", "1", "extra"}, // NoArgs
		{"inspect"},                            // ExactArgs(1)
		{"client", "dump", "-p", "1", "--ghost-limit", "lots"},
		{"client", "dump", "-p", "1", "--network-lock", "bogus"},
		{"daemon", "start", "--metrics-addr"}, // flag needs an argument
		{"client", "restore", "x.zip", "--pid-wait", "soon"},
		{"run", "--checkpoint-every", "often", "--", "true"},
	} {
		if got := run(args); got != ExitUsage {
			t.Errorf("cedana %s: exit %d, want %d", strings.Join(args, " "), got, ExitUsage)
		}
	}
	for _, args := range [][]string{{"client"}, {"daemon"}, {"--help"}, {"client", "dump", "--help"}} {
		if got := run(args); got != ExitOK {
			t.Errorf("cedana %s: exit %d, want 0 (help)", strings.Join(args, " "), got)
		}
	}
}

// TestHelpHidesToken: the token from the environment is not a flag
// default, so no --help shows it.
func TestHelpHidesToken(t *testing.T) {
	const secret = "help-must-not-show-this-token-123"
	t.Setenv("CEDANA_TOKEN", secret)
	for _, args := range [][]string{{"--help"}, {"ps", "--help"}, {"daemon", "status", "--help"}, {"help", "run"}} {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		if _, err := root.ExecuteC(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.Contains(out.String(), "--token") {
			t.Errorf("%v: no --token in the help (did the help run?)", args)
		}
		if strings.Contains(out.String(), secret) {
			t.Errorf("%v: the help shows the token:\n%s", args, out.String())
		}
	}
}

// TestSettingFlagsMatchEnv: every flag bound to a configuration key gives
// the value the key's environment variable gives (and so, by the config
// package's tests, the file).
func TestSettingFlagsMatchEnv(t *testing.T) {
	samples := map[string]string{"bool": "true", "int": "7", "size": "3MiB", "duration": "90s"}
	g := &globals{}
	root := newRoot(g)
	seen := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			sv, ok := f.Value.(*settingValue)
			if !ok {
				return
			}
			seen++
			s := sv.setting
			value, ok := samples[s.Kind]
			switch {
			case ok:
			case s.Key == "daemon.metrics_addr":
				value = "off"
			case s.Key == "criu.network_lock":
				value = "iptables"
			case s.Key == "storage.backend":
				value = "s3"
			default:
				value = "/x/" + s.Key
			}
			g.settings = nil
			if err := f.Value.Set(value); err != nil {
				t.Errorf("%s --%s %s: %v", c.CommandPath(), f.Name, value, err)
				return
			}
			fromFlag, err := config.LoadFrom(nil, nil, g.settings...)
			if err != nil {
				t.Fatal(err)
			}
			fromEnv, err := config.LoadFrom(nil, []string{s.Env + "=" + value})
			if err != nil {
				t.Fatal(err)
			}
			if a, b := s.Get(&fromFlag.Config), s.Get(&fromEnv.Config); a != b {
				t.Errorf("%s --%s %s gives %q, %s gives %q", c.CommandPath(), f.Name, value, a, s.Env, b)
			}
		})
	}
	walk(root)
	if seen < 12 {
		t.Errorf("only %d flags bound to settings", seen)
	}
}

// TestDockerHostOverTCP: cedana talks to Docker without TLS, so a tcp://
// engine is accepted on loopback only, from the flag and from DOCKER_HOST.
func TestDockerHostOverTCP(t *testing.T) {
	for host, ok := range map[string]bool{
		"": true, "unix:///var/run/docker.sock": true, "tcp://127.0.0.1:2375": true,
		"tcp://localhost:2375": true, "tcp://[::1]:2375": true,
		"tcp://10.0.0.5:2375": false, "tcp://docker.example.com:2376": false, "tcp://0.0.0.0:2375": false,
	} {
		if err := checkDockerHost(host, "--docker-host"); (err == nil) != ok {
			t.Errorf("%q: ok=%v, got %v", host, ok, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: the dump commands stop at the root check before the Docker host is looked at")
	}
	t.Setenv("HOME", t.TempDir())
	if got := run([]string{"dump", "docker", "web", "--docker-host", "tcp://10.0.0.5:2375"}); got != ExitUsage {
		t.Errorf("dump docker --docker-host tcp://10.0.0.5:2375: exit %d, want %d", got, ExitUsage)
	}
	t.Setenv("DOCKER_HOST", "tcp://10.0.0.5:2375")
	if got := run([]string{"dump", "docker", "web"}); got != ExitUsage {
		t.Errorf("DOCKER_HOST=tcp://10.0.0.5:2375 dump docker: exit %d, want %d", got, ExitUsage)
	}
}

// TestCheckpointEveryLikeSetting: --checkpoint-every takes what
// policy.checkpoint_every takes, a number of seconds included.
func TestCheckpointEveryLikeSetting(t *testing.T) {
	for in, want := range map[string]time.Duration{"90s": 90 * time.Second, "90": 90 * time.Second, "1m30s": 90 * time.Second} {
		var d time.Duration
		if err := newDurationValue(&d).Set(in); err != nil || d != want {
			t.Errorf("--checkpoint-every %s: %v, %v; want %v", in, d, err, want)
		}
		l, err := config.LoadFrom(nil, []string{"CEDANA_POLICY_CHECKPOINT_EVERY=" + in})
		if err != nil || l.Policy.CheckpointEvery.Duration != want {
			t.Errorf("CEDANA_POLICY_CHECKPOINT_EVERY=%s: %v, %v", in, l, err)
		}
	}
}
