package daemon

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cedana/cedana/internal/config"
)

// ErrInsecureTCP is returned when daemon.tcp_addr is set but the TCP
// listener would be served without TLS or without authentication.
var ErrInsecureTCP = errors.New("refusing to serve the API on TCP")

// minTokenLen is the shortest bearer token the daemon accepts.
const minTokenLen = 16

// listenTCP sets up the optional TCP listener. The API runs commands as
// root, so it is only ever served over TLS (daemon.tls_cert and
// daemon.tls_key), and only with authentication on top: a bearer token
// (daemon.token_file), client certificates (daemon.tls_client_ca), or
// both. Anything less refuses to start, saying what to set.
func listenTCP(d config.Daemon) (*grpc.Server, net.Listener, error) {
	if d.TLSCert == "" || d.TLSKey == "" {
		return nil, nil, fmt.Errorf("%w without TLS: daemon.tcp_addr is set but daemon.tls_cert and daemon.tls_key are not; "+
			"set both to the server's certificate and key (PEM), or remove daemon.tcp_addr and use the unix socket", ErrInsecureTCP)
	}
	token, err := readToken(d.TokenFile)
	if err != nil {
		return nil, nil, err
	}
	if err := checkPrivate(d.TLSKey, "daemon.tls_key"); err != nil {
		return nil, nil, err
	}
	if token == "" && d.TLSClientCA == "" {
		return nil, nil, fmt.Errorf("%w without authentication: daemon.tcp_addr is set but neither daemon.token_file nor daemon.tls_client_ca; "+
			"set daemon.token_file (clients pass --token or $CEDANA_TOKEN), daemon.tls_client_ca (clients pass --tls-cert and --tls-key), or both", ErrInsecureTCP)
	}
	cert, err := tls.LoadX509KeyPair(d.TLSCert, d.TLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("daemon.tls_cert/daemon.tls_key: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if d.TLSClientCA != "" {
		pool, err := loadPool(d.TLSClientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("daemon.tls_client_ca: %w", err)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	opts := []grpc.ServerOption{grpc.Creds(credentials.NewTLS(cfg))}
	if token != "" {
		opts = append(opts, grpc.UnaryInterceptor(tokenUnary(token)), grpc.StreamInterceptor(tokenStream(token)))
	}
	l, err := net.Listen("tcp", d.TCPAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", d.TCPAddr, err)
	}
	return grpc.NewServer(opts...), l, nil
}

// readToken reads the bearer token from path ("" = no token). Errors
// never quote the file's contents.
func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	if err := checkPrivate(path, "daemon.token_file"); err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("daemon.token_file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if len(token) < minTokenLen {
		return "", fmt.Errorf("daemon.token_file %s: the token must be at least %d characters", path, minTokenLen)
	}
	if err := CheckToken(token); err != nil {
		return "", fmt.Errorf("daemon.token_file %s: %w", path, err)
	}
	return token, nil
}

// checkPrivate refuses a secret (the token, the TLS key) that users other
// than its owner can read.
func checkPrivate(path, key string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s %s is readable by others (mode %04o): it is a secret; chmod 600 %s",
			ErrInsecureTCP, key, path, perm, path)
	}
	return nil
}

// CheckToken reports whether token can travel in a gRPC header: printable
// ASCII without spaces. The error never quotes the token.
func CheckToken(token string) error {
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("the token has a character at position %d that is not printable ASCII (or is a space)", i+1)
		}
	}
	return nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificate in %s", path)
	}
	return pool, nil
}

// ClientTLS is how a client reaches the daemon's TCP listener: ca ("" =
// the system's roots) verifies the server; cert and key, when given, are
// the client's certificate for a daemon with daemon.tls_client_ca.
func ClientTLS(ca, cert, key string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pool, err := loadPool(ca)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		cfg.RootCAs = pool
	}
	if (cert == "") != (key == "") {
		return nil, fmt.Errorf("--tls-cert and --tls-key go together: give both or neither")
	}
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}

// Bearer is a per-call credential sending a token; gRPC refuses to send
// it over a connection without transport security.
type Bearer string

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: the
// token only ever travels over TLS.
func (Bearer) RequireTransportSecurity() bool { return true }

// String never shows the token (it is a secret).
func (Bearer) String() string { return "Bearer <redacted>" }

func checkToken(ctx context.Context, token string) error {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if got, ok := strings.CutPrefix(v, "Bearer "); ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "a valid bearer token is required on TCP (see daemon.token_file; clients pass --token or $CEDANA_TOKEN)")
}

func tokenUnary(token string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := checkToken(ctx, token); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

func tokenStream(token string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := checkToken(ss.Context(), token); err != nil {
			return err
		}
		return h(srv, ss)
	}
}
