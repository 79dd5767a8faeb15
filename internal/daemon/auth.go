package daemon

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
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

// listenTCP sets up the optional TCP listener. It refuses to start
// without authentication: a bearer token (daemon.token_file), TLS client
// certificates (daemon.tls_client_ca), or both.
func listenTCP(d config.Daemon) (*grpc.Server, net.Listener, error) {
	var opts []grpc.ServerOption
	token := ""
	if d.TokenFile != "" {
		b, err := os.ReadFile(d.TokenFile)
		if err != nil {
			return nil, nil, fmt.Errorf("daemon.token_file: %w", err)
		}
		token = strings.TrimSpace(string(b))
		if len(token) < 16 {
			return nil, nil, fmt.Errorf("daemon.token_file: the token must be at least 16 characters")
		}
	}
	if d.TLSCert != "" || d.TLSKey != "" || d.TLSClientCA != "" {
		cert, err := tls.LoadX509KeyPair(d.TLSCert, d.TLSKey)
		if err != nil {
			return nil, nil, fmt.Errorf("daemon.tls_cert/tls_key: %w", err)
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if d.TLSClientCA != "" {
			pem, err := os.ReadFile(d.TLSClientCA)
			if err != nil {
				return nil, nil, fmt.Errorf("daemon.tls_client_ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, nil, fmt.Errorf("daemon.tls_client_ca: no certificate in %s", d.TLSClientCA)
			}
			cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	if token == "" && d.TLSClientCA == "" {
		return nil, nil, fmt.Errorf("daemon.tcp_addr is set but neither daemon.token_file nor daemon.tls_client_ca: refusing to serve the API on TCP without authentication")
	}
	if token != "" {
		opts = append(opts, grpc.UnaryInterceptor(tokenUnary(token)), grpc.StreamInterceptor(tokenStream(token)))
	}
	l, err := net.Listen("tcp", d.TCPAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", d.TCPAddr, err)
	}
	return grpc.NewServer(opts...), l, nil
}

func checkToken(ctx context.Context, token string) error {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if got, ok := strings.CutPrefix(v, "Bearer "); ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "a valid bearer token is required on TCP (see daemon.token_file)")
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
