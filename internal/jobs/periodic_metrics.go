package jobs

import "github.com/prometheus/client_golang/prometheus"

// periodicMetrics describe periodic checkpoints: how the runs of the
// schedule ended (skip.go).
type periodicMetrics struct {
	runs *prometheus.CounterVec
}

func newPeriodicMetrics(reg prometheus.Registerer) *periodicMetrics {
	p := &periodicMetrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cedana_periodic_runs_total",
			Help: "Runs of periodic checkpoint schedules that looked at the job first, by outcome: " +
				"unchanged (skipped: nothing changed since the last checkpoint), changed (checkpointed), " +
				"unsafe (checkpointed: unchanged, but state that can change unseen, under skip_unchanged=safe)."},
			[]string{"outcome"}),
	}
	reg.MustRegister(p.runs)
	return p
}

// periodicRun counts one run of a periodic schedule by outcome.
func (m *Metrics) periodicRun(outcome string) {
	if m != nil && m.periodic != nil {
		m.periodic.runs.WithLabelValues(outcome).Inc()
	}
}
