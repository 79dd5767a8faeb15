package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/cedana/cedana/api/cedana/v1"
	"github.com/cedana/cedana/internal/bench"
	"github.com/cedana/cedana/internal/jobs"
	"github.com/cedana/cedana/internal/template"
)

// newBenchCmd is `cedana bench coldstart`.
func newBenchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure Cedana on this machine (through the daemon)"}
	var (
		runs, clones int
		ready, plot  string
		lazy         bool
		timeout      time.Duration
	)
	cold := &cobra.Command{
		Use:   "coldstart --ready PROBE [--runs N] [--clones N] [--plot FILE] -- CMD [ARGS...]",
		Short: "Time-to-ready of CMD started cold against clones of a warm template of it",
		Long: `Starts CMD --runs times as a job (in its own PID namespace) and times it until
the probe passes; then makes a template of a warm copy and, --runs times,
starts --clones clones of it at once and times each until its probe passes.
Prints p50/p95 of both (and of the slowest clone of each round) and, with
--plot, writes a PNG of both distributions. CMD must listen on the probe's
port (a tcp: or http: probe) on all addresses, so that its clones are
reachable in their own network namespaces.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			if runs < 1 || clones < 1 {
				return usagef("--runs and --clones must be at least 1")
			}
			probe, err := template.ParseProbe(ready)
			if err != nil || probe == nil {
				return usagef("--ready: want tcp:PORT, http:/PATH, http:URL or file:PATH (%v)", err)
			}
			wd, err := os.Getwd()
			if err != nil {
				return err
			}
			argv := append([]string(nil), args...)
			if argv[0], err = resolveProgram(args[0], wd); err != nil {
				return err
			}
			c, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			b := &coldBench{g: g, c: c, probe: probe, argv: argv, dir: wd, timeout: timeout, tag: strconv.FormatInt(time.Now().UnixNano()%1e9, 36)}
			return b.run(runs, clones, lazy, plot)
		},
	}
	cold.Flags().IntVar(&runs, "runs", 10, "rounds of each kind")
	cold.Flags().IntVar(&clones, "clones", 1, "clones started at once per warm round")
	cold.Flags().StringVar(&ready, "ready", "", "when CMD is ready: tcp:PORT, http:/PATH, http:URL or file:PATH (required)")
	cold.Flags().StringVar(&plot, "plot", "", "write a PNG plot of both distributions to this file")
	cold.Flags().BoolVar(&lazy, "lazy", false, "restore the clones with lazy pages")
	cold.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long one start may take to be ready")
	_ = cold.MarkFlagRequired("ready")
	addOutputFlag(cold, g)
	cmd.AddCommand(cold)
	return cmd
}

type coldBench struct {
	g       *globals
	c       pb.CedanaClient
	probe   *template.Probe
	argv    []string
	dir     string
	timeout time.Duration
	tag     string
}

// benchReport is what -o json prints.
type benchReport struct {
	Cold, Warm, AllReady bench.Summary
	ColdSeconds          []float64 `json:"cold_seconds"`
	WarmSeconds          []float64 `json:"warm_seconds"`
	Speedup              float64   `json:"speedup_p50"`
	Plot                 string    `json:"plot,omitempty"`
}

func (b *coldBench) run(runs, clones int, lazy bool, plotPath string) error {
	ctx := context.Background()
	cold := bench.Sample{Name: "cold start"}
	for i := 0; i < runs; i++ {
		d, err := b.coldOnce(ctx, fmt.Sprintf("bench-%s-cold-%d", b.tag, i))
		if err != nil {
			return err
		}
		cold.Values = append(cold.Values, d)
		fmt.Fprintf(os.Stderr, "cold %d/%d: %v\n", i+1, runs, d.Round(time.Millisecond))
	}
	// The template: a warm copy, made once.
	name := "bench-" + b.tag
	src := name + "-src"
	if _, err := b.coldOnceKeep(ctx, src); err != nil {
		return err
	}
	_, err := b.createTemplate(ctx, name, src)
	b.end(ctx, src)
	if err != nil {
		return b.g.rpcError(err)
	}
	defer b.c.RemoveTemplate(ctx, &pb.RemoveTemplateRequest{Name: name})
	warmName := "warm template restore"
	if lazy {
		warmName = "warm template restore (lazy)"
	}
	warm, all := bench.Sample{Name: warmName}, bench.Sample{Name: fmt.Sprintf("all %d clones ready", clones)}
	for i := 0; i < runs; i++ {
		resp, err := b.c.RunFromTemplate(ctx, &pb.RunFromTemplateRequest{Template: name, Count: int32(clones),
			Prefix: fmt.Sprintf("%s-w%d", name, i), Ready: b.probe.Raw, ReadyTimeoutMs: b.timeout.Milliseconds(), Lazy: lazy})
		if err != nil {
			return b.g.rpcError(err)
		}
		var slowest time.Duration
		for _, cl := range resp.GetClones() {
			if cl.GetJob() != nil {
				defer b.end(ctx, cl.GetJob().GetId())
			}
			if cl.GetError() != "" {
				return fmt.Errorf("clone %s: %s", cl.GetJob().GetName(), cl.GetError())
			}
			d := time.Duration(cl.GetReadyUs()) * time.Microsecond
			warm.Values = append(warm.Values, d)
			slowest = max(slowest, d)
		}
		all.Values = append(all.Values, slowest)
		fmt.Fprintf(os.Stderr, "warm %d/%d: %d clone(s), slowest ready in %v\n", i+1, runs, clones, slowest.Round(time.Millisecond))
		for _, cl := range resp.GetClones() {
			b.end(ctx, cl.GetJob().GetId())
		}
	}
	rep := benchReport{Cold: cold.Summarize(), Warm: warm.Summarize(), AllReady: all.Summarize(), Plot: plotPath}
	rep.Cold.Name, rep.Warm.Name, rep.AllReady.Name = cold.Name, warm.Name, all.Name
	for _, v := range cold.Values {
		rep.ColdSeconds = append(rep.ColdSeconds, v.Seconds())
	}
	for _, v := range warm.Values {
		rep.WarmSeconds = append(rep.WarmSeconds, v.Seconds())
	}
	if rep.Warm.P50 > 0 {
		rep.Speedup = float64(rep.Cold.P50) / float64(rep.Warm.P50)
	}
	if plotPath != "" {
		title := fmt.Sprintf("%s: cold start vs warm template (%d runs, %d clone(s) at once)", baseName(b.argv), runs, clones)
		if err := bench.Plot(plotPath, title, []bench.Sample{cold, warm}); err != nil {
			return err
		}
	}
	if b.g.output == "json" {
		return printJSON(rep)
	}
	for _, s := range []bench.Summary{rep.Cold, rep.Warm, rep.AllReady} {
		fmt.Printf("%-32s n=%-3d p50 %-9v p95 %-9v min %-9v max %v\n", s.Name, s.N, s.P50.Round(time.Millisecond),
			s.P95.Round(time.Millisecond), s.Min.Round(time.Millisecond), s.Max.Round(time.Millisecond))
	}
	fmt.Printf("speed-up at p50: %.1f×\n", rep.Speedup)
	if plotPath != "" {
		fmt.Printf("plot: %s\n", plotPath)
	}
	return nil
}

// createTemplate makes template name of job src. The service may still
// hold the probe's connection for a moment after answering it (the
// server has not seen the close yet), which template create refuses: it
// is retried for a few seconds.
func (b *coldBench) createTemplate(ctx context.Context, name, src string) (*pb.Template, error) {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := b.c.CreateTemplate(ctx, &pb.CreateTemplateRequest{Name: name, Job: src})
		if err == nil || !strings.Contains(err.Error(), "established TCP connection") || time.Now().After(deadline) {
			return resp, err
		}
	}
}

// baseName is CMD for a title: each word's base name, e.g.
// "python3 slowsvc.py 8080 3".
func baseName(argv []string) string {
	words := make([]string, len(argv))
	for i, a := range argv {
		words[i] = filepath.Base(a)
	}
	t := strings.Join(words, " ")
	if len(t) > 60 {
		t = t[:57] + "..."
	}
	return t
}

// coldOnce starts CMD as a job, times it until ready and ends it.
func (b *coldBench) coldOnce(ctx context.Context, name string) (time.Duration, error) {
	d, err := b.coldOnceKeep(ctx, name)
	b.end(ctx, name)
	return d, err
}

// coldOnceKeep starts CMD as job name and times it until ready.
func (b *coldBench) coldOnceKeep(ctx context.Context, name string) (time.Duration, error) {
	b.waitPortFree()
	start := time.Now()
	_, err := b.c.Run(ctx, &pb.RunRequest{Name: name, Cmd: b.argv, Dir: b.dir, Env: jobs.JobEnv(os.Environ()), PidNamespace: true})
	if err != nil {
		return 0, b.g.rpcError(err)
	}
	pctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	if err := b.probe.Wait(pctx, "", 0); err != nil {
		b.end(ctx, name)
		return 0, fmt.Errorf("cold start %s: %w", name, err)
	}
	return time.Since(start), nil
}

// end kills and removes a job of the benchmark.
func (b *coldBench) end(ctx context.Context, ref string) {
	_, _ = b.c.RemoveJob(ctx, &pb.RemoveJobRequest{Job: ref, Force: true})
}

// waitPortFree waits until nothing listens on the probe's port on the
// host any more (the previous round's process is gone), so that a probe
// never answers for the wrong process.
func (b *coldBench) waitPortFree() {
	if b.probe.Port == 0 {
		return
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(b.probe.Port))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
	}
}
