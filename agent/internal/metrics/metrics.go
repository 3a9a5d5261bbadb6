// Package metrics holds the agent's Prometheus metrics, all prefixed
// k8secrets_agent_. It uses github.com/VictoriaMetrics/metrics rather than
// client_golang: the same exposition format for a smaller idle footprint
// (issue 3 measured 7.1 MiB against 8.9 MiB RSS for a skeleton agent).
package metrics

import (
	"fmt"
	"io"
	"sync"
	"time"

	vm "github.com/VictoriaMetrics/metrics"
)

const prefix = "k8secrets_agent_"

// reloadBuckets spans a local HTTP call (sub-millisecond) to a restart with
// its grace period (tens of seconds).
var reloadBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Agent is the agent's metric set. A nil *Agent records nothing, so tests
// may pass nil.
type Agent struct {
	set *vm.Set

	mu     sync.Mutex
	loaded map[string]string // dir -> name of its loaded_info series
}

// New returns an empty set with the build info.
func New(version string) *Agent {
	m := &Agent{set: vm.NewSet()}
	m.set.NewGauge(fmt.Sprintf(`%sbuild_info{version=%q}`, prefix, version), func() float64 { return 1 })
	// Create the series users alert on, so they exist before the first event.
	m.set.GetOrCreateCounter(prefix + "watch_errors_total")
	m.set.GetOrCreateCounter(prefix + "resyncs_total")
	// last_reload_success_timestamp_seconds is created by the first
	// success: absent, not 0 ("1970"), until then. last_reload_successful
	// starts at 1: nothing has failed, and an alert on "== 0" must not
	// fire for an agent that has had nothing to reload.
	m.set.GetOrCreateGauge(prefix+"last_reload_successful", nil).Set(1)
	m.set.GetOrCreateCounter(prefix + "reloads_refused_total")
	return m
}

// ReloadResult records whether the last reload attempt (all its actions)
// succeeded: the 0/1 gauge an alert watches.
func (m *Agent) ReloadResult(ok bool) {
	if m == nil {
		return
	}
	v := 0.0
	if ok {
		v = 1
	}
	m.set.GetOrCreateGauge(prefix+"last_reload_successful", nil).Set(v)
}

// ReloadRefused counts a reload not made because the content that changed
// was refused.
func (m *Agent) ReloadRefused() {
	if m == nil {
		return
	}
	m.set.GetOrCreateCounter(prefix + "reloads_refused_total").Inc()
}

// ContentRefused sets whether a watched directory's current content is
// refused by validation (1) or not (0).
func (m *Agent) ContentRefused(dir string, refused bool) {
	if m == nil {
		return
	}
	v := 0.0
	if refused {
		v = 1
	}
	m.set.GetOrCreateGauge(fmt.Sprintf(`%scontent_refused{path=%q}`, prefix, dir), nil).Set(v)
}

// Loaded records what the app has loaded from a watched directory: the
// version identifier (the kubelet's "..data" target name, or a digest
// prefix for a plain directory) of its content at start-up or at the last
// successful reload, and its keyed content id (contentid.Of; "" without a
// key), as an info metric with the value 1.
func (m *Agent) Loaded(dir, version, contentID string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loaded == nil {
		m.loaded = map[string]string{}
	}
	name := fmt.Sprintf(`%sloaded_info{path=%q,version=%q,content_id=%q}`, prefix, dir, version, contentID)
	if old, ok := m.loaded[dir]; ok {
		if old == name {
			return
		}
		m.set.UnregisterMetric(old)
	}
	m.loaded[dir] = name
	m.set.GetOrCreateGauge(name, nil).Set(1)
}

// Unloaded removes the loaded_info series of dir: what the app has loaded
// from it is unknown (an app older than the content at the agent's start).
func (m *Agent) Unloaded(dir string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.loaded[dir]; ok {
		m.set.UnregisterMetric(old)
		delete(m.loaded, dir)
	}
}

// Reload records one reload attempt of an action ("signal", "http",
// "restart", "exec") with result "success" or "failure".
func (m *Agent) Reload(action string, err error, d time.Duration) {
	if m == nil {
		return
	}
	result := "success"
	if err != nil {
		result = "failure"
	}
	m.set.GetOrCreateCounter(fmt.Sprintf(`%sreloads_total{action=%q,result=%q}`, prefix, action, result)).Inc()
	if err != nil {
		m.ReloadResult(false)
	}
	m.set.GetOrCreatePrometheusHistogramExt(fmt.Sprintf(`%sreload_duration_seconds{action=%q}`, prefix, action), reloadBuckets).Update(d.Seconds())
}

// ReloadSucceeded records the time of the last reload whose actions all
// succeeded, and sets last_reload_successful to 1 (a failed action, in
// Reload, sets it to 0).
func (m *Agent) ReloadSucceeded(t time.Time) {
	if m == nil {
		return
	}
	m.set.GetOrCreateGauge(prefix+"last_reload_success_timestamp_seconds", nil).Set(float64(t.UnixNano()) / 1e9)
	m.ReloadResult(true)
}

// ContentChange counts a change of a watched directory's content.
func (m *Agent) ContentChange(dir string) {
	if m == nil {
		return
	}
	m.set.GetOrCreateCounter(fmt.Sprintf(`%scontent_changes_total{path=%q}`, prefix, dir)).Inc()
}

// InvalidContent counts content refused by validation (a broken TLS pair).
func (m *Agent) InvalidContent(dir string) {
	if m == nil {
		return
	}
	m.set.GetOrCreateCounter(fmt.Sprintf(`%sinvalid_content_total{path=%q}`, prefix, dir)).Inc()
}

// WatchError counts an error from the file watcher (including an inotify
// queue overflow).
func (m *Agent) WatchError() {
	if m == nil {
		return
	}
	m.set.GetOrCreateCounter(prefix + "watch_errors_total").Inc()
}

// Resync counts a periodic rescan.
func (m *Agent) Resync() {
	if m == nil {
		return
	}
	m.set.GetOrCreateCounter(prefix + "resyncs_total").Inc()
}

// WatchedFiles sets the number of files in a watched directory.
func (m *Agent) WatchedFiles(dir string, n int) {
	if m == nil {
		return
	}
	m.set.GetOrCreateGauge(fmt.Sprintf(`%swatched_files{path=%q}`, prefix, dir), nil).Set(float64(n))
}

// WritePrometheus writes the set, then a few process and Go runtime
// metrics, in the Prometheus text format.
func (m *Agent) WritePrometheus(w io.Writer) {
	if m == nil {
		return
	}
	m.set.WritePrometheus(w)
	writeProcess(w)
}
