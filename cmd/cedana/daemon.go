package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/daemon"
	"github.com/cedana/cedana/internal/storage"
)

func newDaemonCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "daemon", Short: "Run and control the Cedana daemon"}
	start := &cobra.Command{
		Use:   "start",
		Short: "Run the daemon in the foreground",
		Long: `Run the daemon in the foreground (under systemd, see contrib/systemd).
It serves the gRPC API on daemon.socket (root-only; members of
daemon.socket_group, if set, are root-equivalent) and, with
daemon.tcp_addr, on TCP over TLS only (daemon.tls_cert, daemon.tls_key,
plus daemon.token_file and/or daemon.tls_client_ca). It supervises jobs,
takes their periodic checkpoints, restores them when they die, and serves
Prometheus metrics on daemon.metrics_addr. SIGTERM checkpoints and stops
every running job first (daemon.drain_on_sigterm); SIGINT leaves jobs
running for the next daemon to adopt.

Cluster mode (docs/cluster.md): with --node, --nats or --nats-listen the
daemon joins a cluster over NATS JetStream — an embedded NATS server in
its state directory when no --nats is given (localhost only unless
--nats-listen), else the NATS servers named. A cluster never runs
anonymously on a non-loopback address: credentials (user:pass@ or a token
in the URL, --nats-creds, or --nats-token-file for the embedded server)
are required there.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			if err := requireRoot(); err != nil {
				return err
			}
			containers, err := g.containerService(cfg, &containerFlags{runcRoot: cfg.Daemon.RuncRoot})
			if err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
			store, err := daemonStorage(context.Background(), &cfg.Config, log)
			if err != nil {
				return err
			}
			if store != nil {
				defer storage.CloseBackend(store)
			}
			return daemon.Run(context.Background(), daemon.Options{Config: cfg.Config, Engine: g.service(cfg),
				Containers: containers, Log: log, Storage: store})
		},
	}
	g.settingFlag(start.Flags(), "socket", "daemon.socket", "unix socket of the API (default: daemon.socket)")
	g.settingFlag(start.Flags(), "state-dir", "daemon.state_dir", "state store, job logs and checkpoints (default: daemon.state_dir)")
	g.settingFlag(start.Flags(), "metrics-addr", "daemon.metrics_addr", `address for Prometheus /metrics, or "off" (default: daemon.metrics_addr)`)
	g.settingFlag(start.Flags(), "storage-backend", "storage.backend", "where jobs' checkpoints go: local, dir, s3 or jetstream (default: storage.backend, else local)")
	g.settingFlag(start.Flags(), "node", "cluster.node", "cluster mode: this node's name (default: cluster.node, else the hostname once --nats or --nats-listen is given)")
	g.settingFlag(start.Flags(), "nats", "cluster.nats_urls", "cluster mode: NATS servers to join, URL[,URL…] (nats://user:pass@host:4222, nats://token@host:4222, tls://…); none: run an embedded NATS server")
	g.settingFlag(start.Flags(), "nats-listen", "cluster.nats_listen", "cluster mode: address of the embedded NATS server, for other daemons to join (default 127.0.0.1, a free port; not loopback needs --nats-token-file)")
	g.settingFlag(start.Flags(), "nats-creds", "cluster.nats_creds", "cluster mode: NATS credentials file (JWT and seed) for --nats")
	g.settingFlag(start.Flags(), "nats-token-file", "cluster.nats_token_file", "cluster mode: file with the token clients of the embedded NATS server must present")
	g.settingFlag(start.Flags(), "node-timeout", "cluster.node_timeout", "cluster mode: a node without a heartbeat for this long is down (default 10s)")

	status := &cobra.Command{
		Use:   "status",
		Short: "Report whether the daemon is running and healthy (exit 0 when it is)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return g.rpcError(err)
			}
			fmt.Println(strings.ToLower(resp.GetStatus().String()))
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return fmt.Errorf("%w: the daemon is not serving", errDaemonDown)
			}
			return nil
		},
	}
	drain := &cobra.Command{
		Use:   "drain",
		Short: "Checkpoint and stop every running job (before maintenance or preemption)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := pb.NewCedanaClient(conn).Drain(context.Background(), &pb.DrainRequest{})
			if err != nil {
				return g.rpcError(err)
			}
			for _, c := range resp.GetCheckpoints() {
				fmt.Printf("%s\t%s\t%s\n", c.GetJobId(), c.GetId(), c.GetPath())
			}
			if len(resp.GetErrors()) > 0 {
				return fmt.Errorf("drain: %s", strings.Join(resp.GetErrors(), "; "))
			}
			return nil
		},
	}
	cmd.AddCommand(start, status, drain)
	return cmd
}

var errDaemonDown = errors.New("daemon not available")

// dial connects to the daemon's unix socket, or to its TCP listener
// (host:port) over TLS with a token and/or a client certificate, failing
// fast with a clear message when no daemon listens.
func (g *globals) dial() (*grpc.ClientConn, error) {
	cfg, err := g.load()
	if err != nil {
		return nil, err
	}
	addr := cfg.Daemon.Socket
	if g.address != "" {
		addr = g.address
	}
	if strings.HasPrefix(addr, "/") {
		if c, err := net.DialTimeout("unix", addr, time.Second); err != nil {
			if errors.Is(err, os.ErrPermission) {
				return nil, fmt.Errorf("%w: permission denied on %s: run as root (or as a member of daemon.socket_group)", errDaemonDown, addr)
			}
			return nil, fmt.Errorf("%w: the cedana daemon is not running (nothing listens on %s); start it with `cedana daemon start`", errDaemonDown, addr)
		} else {
			c.Close()
		}
		return grpc.NewClient("unix://"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	tlsCfg, err := daemon.ClientTLS(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return nil, usageError{err.Error()}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg))}
	token, err := g.bearerToken()
	if err != nil {
		return nil, err
	}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(daemon.Bearer(token)))
	}
	return grpc.NewClient(addr, opts...)
}

// bearerToken returns the token for the TCP listener: --token,
// --token-file, else $CEDANA_TOKEN. Errors never quote it.
func (g *globals) bearerToken() (string, error) {
	token := g.token
	switch {
	case token != "":
	case g.tokenFile != "":
		b, err := os.ReadFile(g.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	default:
		token = os.Getenv("CEDANA_TOKEN")
	}
	if err := daemon.CheckToken(token); err != nil {
		return "", usageError{"the bearer token (--token, --token-file or $CEDANA_TOKEN): " + err.Error()}
	}
	return token, nil
}

// rpcError turns a gRPC status into an error for the user, keeping the
// meaning the exit code needs.
func (g *globals) rpcError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unavailable:
		if strings.Contains(st.Message(), "PID") {
			return fmt.Errorf("%w: %s", errPIDBusyRPC, st.Message())
		}
		return fmt.Errorf("%w: %s", errDaemonDown, st.Message())
	case codes.NotFound, codes.InvalidArgument, codes.AlreadyExists:
		return fmt.Errorf("%w: %s", errInputRPC, st.Message())
	case codes.FailedPrecondition:
		return fmt.Errorf("%w: %s", errRefusedRPC, st.Message())
	case codes.DataLoss:
		return fmt.Errorf("%w: %s", errArchiveRPC, st.Message())
	case codes.Unauthenticated, codes.PermissionDenied:
		return fmt.Errorf("%w: %s", errDaemonDown, st.Message())
	}
	return errors.New(st.Message())
}

var (
	errPIDBusyRPC = errors.New("PID still in use")
	errInputRPC   = errors.New("invalid input")
	errRefusedRPC = errors.New("refused")
	errArchiveRPC = errors.New("archive refused")
)
