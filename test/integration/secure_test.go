package integration

// Tests of the secure API and the configuration's safety: the TCP
// listener speaks only TLS and wants a token or client certificate on
// top; the token never shows in --help, config show, logs or errors; a
// config file others could write is refused; a hook that leaves a child
// holding its output does not hang a dump; "off" works for the metrics
// address from the environment.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cedana/cedana/internal/testcerts"
)

const tlsTestToken = "s3cret-token-for-the-daemon-test-0xC0FFEE"

// TestDaemonTLS: over TCP, the CLI needs the daemon's CA and the token;
// a cleartext client, a wrong CA and a missing or wrong token fail, and
// the token appears in no output.
func TestDaemonTLS(t *testing.T) {
	dir := t.TempDir()
	good, err := testcerts.New(dir, "good")
	if err != nil {
		t.Fatal(err)
	}
	other, err := testcerts.New(dir, "other")
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tlsTestToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d := startDaemon(t, daemonOpts{Daemon: map[string]any{"tcp_addr": addr, "token_file": tokenFile,
		"tls_cert": good.ServerCert, "tls_key": good.ServerKey}})

	var outputs []string // everything the CLI printed, checked for the token at the end
	check := func(name string, wantOK bool, env []string, args ...string) result {
		t.Helper()
		r := d.cliWith(env, append([]string{"--address", addr}, args...)...)
		outputs = append(outputs, name+": "+r.stdout+r.stderr)
		if (r.code == 0) != wantOK {
			t.Errorf("%s: want success=%v, got %s", name, wantOK, r)
		}
		return r
	}
	check("no CA", false, nil, "--token", tlsTestToken, "ps")
	check("wrong CA", false, nil, "--tls-ca", other.CA, "--token", tlsTestToken, "ps")
	r := check("no token", false, nil, "--tls-ca", good.CA, "ps")
	if !strings.Contains(strings.ToLower(r.stderr), "token") {
		t.Errorf("the refusal without a token does not mention the token: %s", r)
	}
	if r.code != 7 {
		t.Errorf("no token: want exit 7, got %d", r.code)
	}
	check("wrong token", false, nil, "--tls-ca", good.CA, "--token", "wrong-token-wrong-token", "ps")
	check("CA and token", true, nil, "--tls-ca", good.CA, "--token", tlsTestToken, "ps")
	check("token file", true, nil, "--tls-ca", good.CA, "--token-file", tokenFile, "ps")
	check("env", true, []string{"CEDANA_TLS_CA=" + good.CA, "CEDANA_TOKEN=" + tlsTestToken}, "-v", "daemon", "status")
	check("env, wrong CA", false, []string{"CEDANA_TLS_CA=" + other.CA, "CEDANA_TOKEN=" + tlsTestToken}, "-v", "ps")

	// A cleartext gRPC client is not served.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	cancel()
	conn.Close()
	if err == nil {
		t.Error("a cleartext client was served on the TCP listener")
	}

	// The token shows nowhere: --help, config show, the CLI's output and
	// errors (above, with -v), the daemon's log.
	env := []string{"CEDANA_TOKEN=" + tlsTestToken}
	for _, args := range [][]string{{"--help"}, {"ps", "--help"}, {"config", "show"}} {
		r := d.cliWith(env, args...)
		outputs = append(outputs, strings.Join(args, " ")+": "+r.stdout+r.stderr)
	}
	outputs = append(outputs, "daemon log: "+d.log())
	for _, o := range outputs {
		if strings.Contains(o, tlsTestToken) {
			t.Errorf("the token appears in %.300s", o)
		}
	}
}

// TestDaemonTCPRefusals: with daemon.tcp_addr, the daemon refuses to
// start without a server certificate, or without authentication, saying
// what to set.
func TestDaemonTCPRefusals(t *testing.T) {
	dir := t.TempDir()
	certs, err := testcerts.New(dir, "c")
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tlsTestToken), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		keys map[string]any
		want []string
	}{
		{"no certificate", map[string]any{"token_file": tokenFile}, []string{"without TLS", "daemon.tls_cert", "daemon.tls_key"}},
		{"no authentication", map[string]any{"tls_cert": certs.ServerCert, "tls_key": certs.ServerKey},
			[]string{"without authentication", "daemon.token_file", "daemon.tls_client_ca"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.keys["tcp_addr"] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
			d := newTestDaemon(t, daemonOpts{Daemon: c.keys})
			d.launch()
			if code := d.waitExit(15 * time.Second); code == 0 {
				t.Errorf("the daemon exited 0")
			}
			log := d.log()
			for _, w := range c.want {
				if !strings.Contains(log, w) {
					t.Errorf("the refusal does not say %q:\n%s", w, log)
				}
			}
			if strings.Contains(log, tlsTestToken) {
				t.Errorf("the daemon's log shows the token:\n%s", log)
			}
			if r := d.cli("daemon", "status"); r.code != 7 {
				t.Errorf("daemon status after the refusal: want exit 7, got %s", r)
			}
			if _, err := os.Stat(d.stateDir); err == nil {
				t.Errorf("the daemon created its state dir before refusing: it should refuse before starting anything")
			}
		})
	}
}

// TestMetricsOffFromEnv: CEDANA_DAEMON_METRICS_ADDR=off turns metrics
// off, as --metrics-addr off does (it used to fail with "missing port").
func TestMetricsOffFromEnv(t *testing.T) {
	t.Setenv("CEDANA_DAEMON_METRICS_ADDR", "off")
	d := startDaemon(t, daemonOpts{})
	if strings.Contains(d.log(), "serving metrics") {
		t.Errorf("metrics are served with CEDANA_DAEMON_METRICS_ADDR=off:\n%s", d.log())
	}
}

// writeUserConfig writes e's ~/.cedana/cedana_config.json with mode.
func writeUserConfig(t *testing.T, e *env, cfg map[string]any, mode os.FileMode) string {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(e.home, ".cedana")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "cedana_config.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUntrustedConfigRefused: a world-writable config file naming a hook
// is refused before anything runs, with the fix; the hook never runs.
func TestUntrustedConfigRefused(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	marker := filepath.Join(t.TempDir(), "hook-ran")
	p := writeUserConfig(t, e, map[string]any{"hooks": map[string]string{"pre_dump": "touch " + marker}}, 0o666)
	counter := filepath.Join(t.TempDir(), "n")
	proc := start(t, "sh", "-c", counterScript(counter))
	eventually(t, 5*time.Second, "the counter to start", func() bool { return readCounter(counter) >= 0 })
	for _, args := range [][]string{{"config", "show"}, {"client", "dump", "-p", strconv.Itoa(proc.pid()), "-d", e.dir, "--leave-running"}} {
		r := e.cedana(args...)
		if r.code == 0 {
			t.Errorf("cedana %s with a 0666 config: %s", strings.Join(args, " "), r)
		}
		if !strings.Contains(r.stderr, "chmod go-w "+p) {
			t.Errorf("cedana %s: the refusal does not give the fix: %s", strings.Join(args, " "), r)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the hook of the untrusted file ran")
	}
	if !proc.running() {
		t.Error("the process did not survive the refused dump")
	}
}

// TestHookChildDoesNotHangDump: a pre-dump hook that leaves `sleep 60 &`
// holding its stdout; the dump still finishes promptly.
func TestHookChildDoesNotHangDump(t *testing.T) {
	requireCRIU(t)
	e := newEnv(t)
	pidFile := filepath.Join(t.TempDir(), "bg.pid")
	writeUserConfig(t, e, map[string]any{"hooks": map[string]string{"pre_dump": "sleep 60 & echo $! > " + pidFile}}, 0o600)
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	counter := filepath.Join(t.TempDir(), "n")
	proc := start(t, "sh", "-c", counterScript(counter))
	eventually(t, 5*time.Second, "the counter to start", func() bool { return readCounter(counter) >= 0 })
	t0 := time.Now()
	path := e.dump(proc.pid(), "--leave-running")
	took := time.Since(t0)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no archive: %v", err)
	}
	if took > 15*time.Second {
		t.Errorf("the dump took %v: the hook's background child held it up", took)
	}
	if _, err := os.Stat(pidFile); err != nil {
		t.Errorf("the hook did not run: %v", err)
	}
	t.Logf("dump with a hook leaving a background child: %v", took.Round(time.Millisecond))
}
