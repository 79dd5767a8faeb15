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
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/daemon"
)

// daemonFlags override the daemon section of the configuration.
type daemonFlags struct {
	socket, stateDir, metricsAddr string
}

func (f *daemonFlags) apply(cfg *config.Loaded) {
	if f.socket != "" {
		cfg.Daemon.Socket = f.socket
	}
	if f.stateDir != "" {
		cfg.Daemon.StateDir = f.stateDir
	}
	if f.metricsAddr != "" {
		if f.metricsAddr == "off" {
			f.metricsAddr = ""
		}
		cfg.Daemon.MetricsAddr = f.metricsAddr
	}
}

func newDaemonCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "daemon", Short: "Run and control the Cedana daemon"}
	var df daemonFlags
	start := &cobra.Command{
		Use:   "start",
		Short: "Run the daemon in the foreground",
		Long: `Run the daemon in the foreground (under systemd, see contrib/systemd).
It serves the gRPC API on daemon.socket (root-only), supervises jobs,
takes their periodic checkpoints, restores them when they die, and serves
Prometheus metrics on daemon.metrics_addr. SIGTERM checkpoints and stops
every running job first (daemon.drain_on_sigterm); SIGINT leaves jobs
running for the next daemon to adopt.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			df.apply(cfg)
			if err := requireRoot(); err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
			return daemon.Run(context.Background(), daemon.Options{Config: cfg.Config, Engine: g.service(cfg),
				Containers: g.containerService(cfg, &containerFlags{}), Log: log})
		},
	}
	start.Flags().StringVar(&df.socket, "socket", "", "unix socket of the API (default: daemon.socket)")
	start.Flags().StringVar(&df.stateDir, "state-dir", "", "state store, job logs and checkpoints (default: daemon.state_dir)")
	start.Flags().StringVar(&df.metricsAddr, "metrics-addr", "", `address for Prometheus /metrics, or "off" (default: daemon.metrics_addr)`)

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

// dial connects to the daemon's unix socket (or a TCP address with a
// token), failing fast with a clear message when no daemon listens.
func (g *globals) dial() (*grpc.ClientConn, error) {
	cfg, err := g.load()
	if err != nil {
		return nil, err
	}
	addr := cfg.Daemon.Socket
	if g.address != "" {
		addr = g.address
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	target := addr
	if strings.HasPrefix(addr, "/") {
		if c, err := net.DialTimeout("unix", addr, time.Second); err != nil {
			if errors.Is(err, os.ErrPermission) {
				return nil, fmt.Errorf("%w: permission denied on %s: run as root (or as a member of daemon.socket_group)", errDaemonDown, addr)
			}
			return nil, fmt.Errorf("%w: the cedana daemon is not running (nothing listens on %s); start it with `cedana daemon start`", errDaemonDown, addr)
		} else {
			c.Close()
		}
		target = "unix://" + addr
	} else if g.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(g.token)))
	}
	return grpc.NewClient(target, opts...)
}

// bearer sends a token with every call (only over TCP).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

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
