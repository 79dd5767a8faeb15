package jobs

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// periodicMetrics describe periodic checkpoints: how the runs of the
// schedule ended (skip.go).
type periodicMetrics struct {
	runs     *prometheus.CounterVec
	cpu      *prometheus.CounterVec
	cpuRatio *prometheus.HistogramVec
}

func newPeriodicMetrics(reg prometheus.Registerer) *periodicMetrics {
	p := &periodicMetrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cedana_periodic_runs_total",
			Help: "Runs of periodic checkpoint schedules that looked at the job first, by outcome: " +
				"unchanged (skipped: nothing changed since the last checkpoint), changed (checkpointed), " +
				"unsafe (checkpointed: unchanged, but state that can change unseen, under skip_unchanged=safe)."},
			[]string{"outcome"}),
		cpu: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cedana_checkpoint_cpu_seconds_total",
			Help: "CPU time of complete process checkpoints, by kind (periodic, requested) and by who spent it: " +
				"criu (its process) or daemon (the daemon's process over the checkpoint: an upper bound, see cost.go)."},
			[]string{"kind", "who"}),
		cpuRatio: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cedana_checkpoint_daemon_cpu_ratio",
			Help:    "The daemon's CPU time for one checkpoint divided by CRIU's, by kind (periodic, requested).",
			Buckets: []float64{.01, .02, .05, .1, .2, .5, 1, 2, 5}}, []string{"kind"}),
	}
	reg.MustRegister(p.runs, p.cpu, p.cpuRatio)
	return p
}

// periodicRun counts one run of a periodic schedule by outcome.
func (m *Metrics) periodicRun(outcome string) {
	if m != nil && m.periodic != nil {
		m.periodic.runs.WithLabelValues(outcome).Inc()
	}
}

// checkpointCPU records the CPU times of one complete checkpoint.
func (m *Metrics) checkpointCPU(kind string, daemon, criu time.Duration) {
	if m == nil || m.periodic == nil {
		return
	}
	m.periodic.cpu.WithLabelValues(kind, "daemon").Add(daemon.Seconds())
	m.periodic.cpu.WithLabelValues(kind, "criu").Add(criu.Seconds())
	m.periodic.cpuRatio.WithLabelValues(kind).Observe(daemon.Seconds() / criu.Seconds())
}
