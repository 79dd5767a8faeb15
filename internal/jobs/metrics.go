package jobs

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cedana/cedana/internal/archive"
	"github.com/cedana/cedana/internal/store"
)

// Metrics are the daemon's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	dumpSeconds    prometheus.Histogram
	restoreSeconds prometheus.Histogram
	bytesWritten   prometheus.Counter
	failures       *prometheus.CounterVec
	frozenSeconds  prometheus.Histogram
	memdumpSeconds prometheus.Histogram
	prunedTotal    prometheus.Counter
	deaths         prometheus.Counter
	periodic       *periodicMetrics // periodic_metrics.go
}

// NewMetrics registers the metrics with reg. Jobs by state are read from
// st at scrape time.
func NewMetrics(reg prometheus.Registerer, st store.Store) *Metrics {
	buckets := []float64{.05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 120}
	m := &Metrics{
		dumpSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cedana_dump_duration_seconds",
			Help: "Time to checkpoint a job, archive included.", Buckets: buckets}),
		restoreSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cedana_restore_duration_seconds",
			Help: "Time to restore a job, verification included.", Buckets: buckets}),
		bytesWritten: prometheus.NewCounter(prometheus.CounterOpts{Name: "cedana_checkpoint_bytes_written_total",
			Help: "Bytes of checkpoint archives written."}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cedana_failures_total",
			Help: "Failed operations, by operation."}, []string{"op"}),
		frozenSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cedana_criu_frozen_seconds",
			Help: "How long CRIU kept a job frozen during a dump (CRIU's own figure).", Buckets: buckets}),
		memdumpSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cedana_criu_memdump_seconds",
			Help: "CRIU's memory dump time (CRIU's own figure).", Buckets: buckets}),
		prunedTotal: prometheus.NewCounter(prometheus.CounterOpts{Name: "cedana_checkpoints_pruned_total",
			Help: "Checkpoints removed by retention policies."}),
		deaths: prometheus.NewCounter(prometheus.CounterOpts{Name: "cedana_job_failures_total",
			Help: "Managed jobs that died unexpectedly."}),
	}
	m.periodic = newPeriodicMetrics(reg)
	reg.MustRegister(m.dumpSeconds, m.restoreSeconds, m.bytesWritten, m.failures, m.frozenSeconds,
		m.memdumpSeconds, m.prunedTotal, m.deaths, &stateCollector{st: st})
	return m
}

func (m *Metrics) dumped(d time.Duration, size int64, s *archive.DumpStats) {
	if m == nil {
		return
	}
	m.dumpSeconds.Observe(d.Seconds())
	m.bytesWritten.Add(float64(size))
	if s != nil {
		m.frozenSeconds.Observe(float64(s.FrozenTimeUS) / 1e6)
		m.memdumpSeconds.Observe(float64(s.MemdumpTimeUS) / 1e6)
	}
}

func (m *Metrics) restored(d time.Duration) {
	if m != nil {
		m.restoreSeconds.Observe(d.Seconds())
	}
}

func (m *Metrics) dumpFailed() {
	if m != nil {
		m.failures.WithLabelValues("dump").Inc()
	}
}

func (m *Metrics) restoreFailed() {
	if m != nil {
		m.failures.WithLabelValues("restore").Inc()
	}
}

func (m *Metrics) pruned() {
	if m != nil {
		m.prunedTotal.Inc()
	}
}

func (m *Metrics) died() {
	if m != nil {
		m.deaths.Inc()
	}
}

// stateCollector reports the number of jobs in each state at scrape time.
type stateCollector struct{ st store.Store }

var jobsDesc = prometheus.NewDesc("cedana_jobs", "Managed jobs, by state.", []string{"state"}, nil)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- jobsDesc }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	jobs, err := c.st.ListJobs(context.Background())
	if err != nil {
		return
	}
	counts := map[State]int{}
	for _, s := range []State{Starting, Running, Dumping, Checkpointed, Restoring, Exited, Failed, Killed} {
		counts[s] = 0
	}
	for _, j := range jobs {
		counts[State(j.State)]++
	}
	for s, n := range counts {
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(n), string(s))
	}
}
