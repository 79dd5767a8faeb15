// Package daemon runs Cedana's long-running service: the gRPC API on a
// unix socket (and optionally on TCP, over TLS only, with a token and/or
// client certificates), the standard gRPC health service, Prometheus metrics, and
// the job manager behind them.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/checkpoint"
	"github.com/cedana/cedana/internal/config"
	"github.com/cedana/cedana/internal/criu"
	"github.com/cedana/cedana/internal/jobs"
	"github.com/cedana/cedana/internal/storage"
	"github.com/cedana/cedana/internal/store"
)

// Options configure a daemon.
type Options struct {
	// Config is the loaded configuration (its Daemon section above all).
	Config config.Config
	// Engine is the checkpoint engine shared with the standalone client.
	Engine *checkpoint.Service
	// Containers is the container engine shared with `cedana dump docker`
	// and friends; nil disables container jobs.
	Containers jobs.Containers
	// Log receives structured logs.
	Log *slog.Logger
	// Ready, if set, is called once every listener is up.
	Ready func()
	// Storage, if set, receives jobs' archives (storage.backend other than
	// local); nil: the checkpoint directory.
	Storage storage.Backend
}

// Run runs the daemon until ctx is done or a signal arrives. SIGTERM
// drains first (checkpoints and stops every running job) when
// daemon.drain_on_sigterm is set; SIGINT stops the daemon and leaves jobs
// running, to be adopted again by the next daemon.
func Run(ctx context.Context, o Options) error {
	d := o.Config.Daemon
	log := o.Log
	// The TCP listener is checked first: a daemon that refuses to serve
	// it (no TLS, no authentication) starts nothing, recovers no job.
	var tcpSrv *grpc.Server
	var tl net.Listener
	if d.TCPAddr != "" {
		var err error
		if tcpSrv, tl, err = listenTCP(d); err != nil {
			return err
		}
		defer tl.Close()
	}
	if err := os.MkdirAll(d.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	st, err := store.Open(filepath.Join(d.StateDir, "cedana.db"))
	if err != nil {
		return err
	}
	defer st.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ckptDir := d.CheckpointDir
	if ckptDir == "" {
		ckptDir = filepath.Join(d.StateDir, "checkpoints")
	}
	p := o.Config.Policy
	mgr := jobs.New(jobs.Config{
		CheckpointDir: ckptDir,
		Storage:       o.Storage,
		LogDir:        filepath.Join(d.StateDir, "logs"),
		DefaultPolicy: store.Policy{CheckpointEvery: p.CheckpointEvery.Duration, Keep: p.Keep, KeepBytes: p.KeepBytes,
			RestoreOnFailure: p.RestoreOnFailure, MaxRestores: p.MaxRestores, SkipUnchanged: p.SkipUnchanged},
		MaxRestores:    p.MaxRestores,
		RestoreBackoff: d.RestoreBackoff.Duration,
		CgroupParent:   cgroupParent(o.Config),
		Dedup:          o.Config.Storage.Dedup,
		NetnsPool:      o.Config.Templates.NetnsPool,
	}, st, o.Engine, o.Containers, log, jobs.NewMetrics(reg, st))
	defer mgr.Close()
	o.Engine.RemoveStaleStaging() // process memory a crashed daemon left behind
	ensureKdatCache(ctx, o.Engine.CRIU(), log)

	// In cluster mode the daemon joins before it recovers its jobs: what
	// it finds here runs again only if the cluster's record says it is
	// still this node's (docs/cluster.md, rule 5).
	svc := &service{m: mgr}
	var cl *clusterNode
	if o.Config.Cluster.Enabled() {
		if cl, err = startCluster(ctx, o.Config, o.Engine, svc, mgr, log); err != nil {
			return err
		}
		defer cl.close()
	}
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("recover jobs: %w", err)
	}
	if cl != nil {
		cl.recordLocalJobs(ctx)
		fctx, stop := context.WithCancel(ctx)
		defer stop()
		go cl.fo.run(fctx)
	}
	hs := health.NewServer()
	unixSrv := grpc.NewServer()
	pb.RegisterCedanaServer(unixSrv, svc)
	healthpb.RegisterHealthServer(unixSrv, hs)
	ul, err := listenUnix(d.Socket, d.SocketGroup)
	if err != nil {
		return err
	}
	defer os.Remove(d.Socket)
	errc := make(chan error, 3)
	go func() { errc <- unixSrv.Serve(ul) }()
	defer unixSrv.Stop()

	if tcpSrv != nil {
		pb.RegisterCedanaServer(tcpSrv, svc)
		healthpb.RegisterHealthServer(tcpSrv, hs)
		go func() { errc <- tcpSrv.Serve(tl) }()
		defer tcpSrv.Stop()
		log.Info("serving the API on TCP", "addr", tl.Addr().String())
	}
	if d.MetricsAddr != "" {
		ml, err := net.Listen("tcp", d.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener %s: %w", d.MetricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { errc <- hsrv.Serve(ml) }()
		defer hsrv.Close()
		log.Info("serving metrics", "addr", ml.Addr().String())
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	log.Info("cedana daemon ready", "socket", d.Socket, "state_dir", d.StateDir, "pid", os.Getpid())
	if o.Ready != nil {
		o.Ready()
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	case sig := <-sigs:
		hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
		if sig == syscall.SIGTERM && d.DrainOnSIGTERM {
			log.Info("SIGTERM: checkpointing every running job before exit", "grace", d.ShutdownGrace.Duration)
			dctx, cancel := context.WithTimeout(context.Background(), d.ShutdownGrace.Duration)
			cks, errs := mgr.Drain(dctx)
			cancel()
			log.Info("drained", "checkpoints", len(cks), "errors", len(errs))
			for _, e := range errs {
				log.Error("drain", "err", e)
			}
		} else {
			log.Info("stopping; jobs keep running and will be adopted by the next daemon", "signal", sig.String())
		}
	}
	return nil
}

// listenUnix listens on a unix socket readable only by root, or by root
// and group when one is configured. A stale socket from a dead daemon is
// replaced; a live one is an error.
//
// It never touches the process's umask (which is shared by every
// goroutine, and the job manager's are already running): the socket is
// bound in a private 0700 directory next to path, given its owner and
// mode there, and only then renamed into place, so that it is never
// reachable with looser permissions.
func listenUnix(path, group string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("another cedana daemon is already listening on %s", path)
	}
	gid := -1
	mode := os.FileMode(0o600)
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("daemon.socket_group: %w", err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("daemon.socket_group %s: gid %q: %w", group, g.Gid, err)
		}
		mode = 0o660
	}
	private, err := os.MkdirTemp(dir, ".cedana-")
	if err != nil {
		return nil, fmt.Errorf("create a private directory for the socket: %w", err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The listener would unlink tmp on Close, which by then names nothing
	// (or someone else's file): the caller removes path instead.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		l.Close()
		return nil, err
	}
	if gid >= 0 {
		if err := os.Chown(tmp, 0, gid); err != nil {
			return fail(fmt.Errorf("chown %s: %w", path, err))
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("put the socket in place at %s: %w", path, err))
	}
	return l, nil
}

// cgroupParent is where the daemon's job cgroups go: cedana, or in
// cluster mode cedana/<node>, so that nodes sharing a machine never
// signal, freeze or end each other's copies through a shared cgroup.
func cgroupParent(cfg config.Config) string {
	if !cfg.Cluster.Enabled() {
		return ""
	}
	name := cfg.Cluster.Node
	if name == "" {
		name, _ = os.Hostname()
	}
	if name == "" || strings.Contains(name, "/") {
		return ""
	}
	return "cedana/" + name
}

// ensureKdatCache installs CRIU's kernel-feature cache before any restore
// runs, so that no CRIU start (two per lazy clone) probes the kernel again
// (internal/criu/kdat.go). Without it CRIU still works, only slower.
func ensureKdatCache(ctx context.Context, c *criu.Client, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := c.EnsureKdatCache(ctx, criu.KdatRunDir)
	switch {
	case err != nil:
		log.Warn("CRIU's kernel-feature cache not installed: every CRIU start probes the kernel", "err", err)
	case st.Action == "built":
		log.Info("CRIU kernel-feature cache built", "dir", st.Dir, "reason", st.Reason, "probe", st.ProbeTime.Round(time.Millisecond).String())
	}
}
