package watch

import (
	"fmt"
	"io"
	"time"

	vm "github.com/VictoriaMetrics/metrics"
)

const prefix = "k8secrets_watch_"

// latencyBuckets span a signal reload (sub-second) to a restart-mode
// rotation of many pods (minutes).
var latencyBuckets = []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// Metrics are the watch's Prometheus metrics, all prefixed k8secrets_watch_,
// in the agent's lightweight style (github.com/VictoriaMetrics/metrics). A
// nil *Metrics records nothing.
type Metrics struct{ set *vm.Set }

// NewMetrics returns the set, with the series alerts use created at 0.
func NewMetrics() *Metrics {
	m := &Metrics{set: vm.NewSet()}
	// Results of a rotation: verified (every pod loaded the new content),
	// unknown (none known stale, some could not say what they loaded),
	// stale (some had not loaded it), unverified (verification impossible:
	// the Secret or the pods unreadable, the pod proxy forbidden), failed
	// (the refresh failed).
	for _, r := range []string{"verified", "unknown", "stale", "unverified", "failed"} {
		m.set.GetOrCreateCounter(fmt.Sprintf(`%srotations_total{result=%q}`, prefix, r))
	}
	m.set.GetOrCreateCounter(prefix + "secret_changes_total")
	m.set.GetOrCreateCounter(prefix + "breaker_trips_total")
	m.set.GetOrCreateGauge(prefix+"leader", nil)
	return m
}

// WritePrometheus writes the exposition format.
func (m *Metrics) WritePrometheus(w io.Writer) { m.set.WritePrometheus(w) }

func (m *Metrics) rotation(result string) {
	if m == nil {
		return
	}
	m.set.GetOrCreateCounter(fmt.Sprintf(`%srotations_total{result=%q}`, prefix, result)).Inc()
}

func (m *Metrics) secretChange() {
	if m == nil {
		return
	}
	m.set.GetOrCreateCounter(prefix + "secret_changes_total").Inc()
}

// breaker sets breaker_open for the Secret (1 open: rotations suspended).
func (m *Metrics) breaker(ns, secret string, open bool) {
	if m == nil {
		return
	}
	v := 0.0
	if open {
		v = 1
		m.set.GetOrCreateCounter(prefix + "breaker_trips_total").Inc()
	}
	m.set.GetOrCreateGauge(fmt.Sprintf(`%sbreaker_open{namespace=%q,secret=%q}`, prefix, ns, secret), nil).Set(v)
}

func (m *Metrics) pods(ns, secret string, verified, stale, unknown int) {
	if m == nil {
		return
	}
	m.set.GetOrCreateGauge(fmt.Sprintf(`%spods_unknown{namespace=%q,secret=%q}`, prefix, ns, secret), nil).Set(float64(unknown))
	m.set.GetOrCreateGauge(fmt.Sprintf(`%spods_verified{namespace=%q,secret=%q}`, prefix, ns, secret), nil).Set(float64(verified))
	m.set.GetOrCreateGauge(fmt.Sprintf(`%spods_stale{namespace=%q,secret=%q}`, prefix, ns, secret), nil).Set(float64(stale))
}

// latency observes the time from the Secret's update (when the informer saw
// it) to all its pods verified.
func (m *Metrics) latency(d time.Duration) {
	if m == nil {
		return
	}
	m.set.GetOrCreatePrometheusHistogramExt(prefix+"update_to_verified_seconds", latencyBuckets).Update(d.Seconds())
}

func (m *Metrics) leader(on bool) {
	if m == nil {
		return
	}
	v := 0.0
	if on {
		v = 1
	}
	m.set.GetOrCreateGauge(prefix+"leader", nil).Set(v)
}

func (m *Metrics) watched(workloads, secrets int) {
	if m == nil {
		return
	}
	m.set.GetOrCreateGauge(prefix+"watched_workloads", nil).Set(float64(workloads))
	m.set.GetOrCreateGauge(prefix+"watched_secrets", nil).Set(float64(secrets))
}
