package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/testcerts"
)

const testToken = "tok-0123456789-abcdefghij-secret"

// serveTCP starts listenTCP for d with the health service, and returns
// its address.
func serveTCP(t *testing.T, d config.Daemon) string {
	t.Helper()
	d.TCPAddr = "127.0.0.1:0"
	srv, l, err := listenTCP(d)
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return l.Addr().String()
}

// call does one health check with the given options and returns its error.
func call(t *testing.T, addr string, opts ...grpc.DialOption) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func tlsCreds(t *testing.T, ca, cert, key string) grpc.DialOption {
	t.Helper()
	cfg, err := ClientTLS(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}

// TestTCPNeedsTLS: the TCP listener speaks only TLS, verifies what it is
// asked to verify, and wants the token on top; no error quotes the token.
func TestTCPNeedsTLS(t *testing.T) {
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
	if err := os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withToken := grpc.WithPerRPCCredentials(Bearer(testToken))

	t.Run("token", func(t *testing.T) {
		addr := serveTCP(t, config.Daemon{TLSCert: good.ServerCert, TLSKey: good.ServerKey, TokenFile: tokenFile})
		cases := []struct {
			name string
			opts []grpc.DialOption
			ok   bool
		}{
			{"cleartext", []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, false},
			{"wrong CA", []grpc.DialOption{tlsCreds(t, other.CA, "", ""), withToken}, false},
			{"right CA, no token", []grpc.DialOption{tlsCreds(t, good.CA, "", "")}, false},
			{"right CA, wrong token", []grpc.DialOption{tlsCreds(t, good.CA, "", ""), grpc.WithPerRPCCredentials(Bearer("nope-nope-nope-nope-nope"))}, false},
			{"right CA and token", []grpc.DialOption{tlsCreds(t, good.CA, "", ""), withToken}, true},
		}
		for _, c := range cases {
			err := call(t, addr, c.opts...)
			if (err == nil) != c.ok {
				t.Errorf("%s: want ok=%v, got %v", c.name, c.ok, err)
			}
			if err != nil && strings.Contains(err.Error(), testToken) {
				t.Errorf("%s: the error quotes the token: %v", c.name, err)
			}
		}
	})
	t.Run("cleartext token refused by the client", func(t *testing.T) {
		addr := serveTCP(t, config.Daemon{TLSCert: good.ServerCert, TLSKey: good.ServerKey, TokenFile: tokenFile})
		err := call(t, addr, grpc.WithTransportCredentials(insecure.NewCredentials()), withToken)
		if err == nil {
			t.Fatal("a token was sent over a cleartext connection")
		}
	})
	t.Run("client certificates", func(t *testing.T) {
		addr := serveTCP(t, config.Daemon{TLSCert: good.ServerCert, TLSKey: good.ServerKey, TLSClientCA: good.CA})
		if err := call(t, addr, tlsCreds(t, good.CA, "", "")); err == nil {
			t.Error("a client without a certificate was served")
		}
		if err := call(t, addr, tlsCreds(t, good.CA, other.ClientCert, other.ClientKey)); err == nil {
			t.Error("a client certificate from another CA was accepted")
		}
		if err := call(t, addr, tlsCreds(t, good.CA, good.ClientCert, good.ClientKey)); err != nil {
			t.Errorf("a client with the right certificate: %v", err)
		}
	})
	t.Run("both", func(t *testing.T) {
		addr := serveTCP(t, config.Daemon{TLSCert: good.ServerCert, TLSKey: good.ServerKey, TLSClientCA: good.CA, TokenFile: tokenFile})
		if err := call(t, addr, tlsCreds(t, good.CA, good.ClientCert, good.ClientKey)); err == nil {
			t.Error("a client certificate without the token was served")
		}
		if err := call(t, addr, tlsCreds(t, good.CA, good.ClientCert, good.ClientKey), withToken); err != nil {
			t.Errorf("certificate and token: %v", err)
		}
	})
}

// TestTCPRefusals: a TCP listener without TLS or without authentication
// is refused, saying what to set; a short token too, without quoting it.
func TestTCPRefusals(t *testing.T) {
	dir := t.TempDir()
	certs, err := testcerts.New(dir, "c")
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(testToken), 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("shorty-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	readable := filepath.Join(dir, "readable")
	if err := os.WriteFile(readable, []byte(testToken), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(readable, 0o644); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	readableKey := filepath.Join(dir, "readable-key.pem")
	if err := os.WriteFile(readableKey, key, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(readableKey, 0o640); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		d    config.Daemon
		want []string
	}{
		{"token, no cert", config.Daemon{TokenFile: tokenFile}, []string{"without TLS", "daemon.tls_cert", "daemon.tls_key"}},
		{"client CA, no cert", config.Daemon{TLSClientCA: certs.CA}, []string{"without TLS", "daemon.tls_cert"}},
		{"cert, no auth", config.Daemon{TLSCert: certs.ServerCert, TLSKey: certs.ServerKey}, []string{"without authentication", "daemon.token_file", "daemon.tls_client_ca"}},
		{"short token", config.Daemon{TLSCert: certs.ServerCert, TLSKey: certs.ServerKey, TokenFile: short}, []string{"at least 16"}},
		{"readable token", config.Daemon{TLSCert: certs.ServerCert, TLSKey: certs.ServerKey, TokenFile: readable}, []string{"readable by others", "chmod 600"}},
		{"readable key", config.Daemon{TLSCert: certs.ServerCert, TLSKey: readableKey, TokenFile: tokenFile}, []string{"daemon.tls_key", "chmod 600"}},
	}
	for _, c := range cases {
		c.d.TCPAddr = "127.0.0.1:0"
		srv, l, err := listenTCP(c.d)
		if err == nil {
			l.Close()
			srv.Stop()
			t.Errorf("%s: served", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", c.name, err, w)
			}
		}
		if strings.Contains(err.Error(), "shorty-secret") || strings.Contains(err.Error(), testToken) {
			t.Errorf("%s: the error quotes the token: %v", c.name, err)
		}
		if c.name != "short token" && !errors.Is(err, ErrInsecureTCP) {
			t.Errorf("%s: not ErrInsecureTCP: %v", c.name, err)
		}
	}
}

// TestClientTLSNeedsPair: a certificate without its key is a clear error.
func TestClientTLSNeedsPair(t *testing.T) {
	if _, err := ClientTLS("", "/x.pem", ""); err == nil || !strings.Contains(err.Error(), "--tls-key") {
		t.Errorf("cert without key: %v", err)
	}
}
