package metrics

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestExposition(t *testing.T) {
	m := New("v1.2.3")
	m.Reload("http", nil, 2*time.Millisecond)
	m.Reload("http", errors.New("status 500"), time.Millisecond)
	m.ReloadSucceeded(time.Unix(1700000000, 0))
	m.ContentChange("/var/run/secrets/k8secrets/db")
	m.InvalidContent("/var/run/secrets/k8secrets/db")
	m.WatchError()
	m.Resync()
	m.WatchedFiles("/var/run/secrets/k8secrets/db", 3)
	var b strings.Builder
	m.WritePrometheus(&b)
	out := b.String()
	for _, want := range []string{
		`k8secrets_agent_build_info{version="v1.2.3"} 1`,
		`k8secrets_agent_reloads_total{action="http",result="success"} 1`,
		`k8secrets_agent_reloads_total{action="http",result="failure"} 1`,
		`k8secrets_agent_reload_duration_seconds_bucket{action="http",le="0.0025"} 2`,
		`k8secrets_agent_reload_duration_seconds_count{action="http"} 2`,
		`k8secrets_agent_last_reload_success_timestamp_seconds 1700000000`,
		`k8secrets_agent_content_changes_total{path="/var/run/secrets/k8secrets/db"} 1`,
		`k8secrets_agent_invalid_content_total{path="/var/run/secrets/k8secrets/db"} 1`,
		`k8secrets_agent_watch_errors_total 1`,
		`k8secrets_agent_resyncs_total 1`,
		`k8secrets_agent_watched_files{path="/var/run/secrets/k8secrets/db"} 3`,
		`process_resident_memory_bytes `,
		`process_cpu_seconds_total `,
		`go_goroutines `,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("exposition:\n%s", out)
	}
	var nilSet *Agent // tests pass nil: every method is a no-op
	nilSet.Reload("http", nil, 0)
	nilSet.WatchError()
}

// TestAlertSeries: the series an alert uses exist from the start with a
// value that does not fire, the last-success timestamp is absent until a
// first success, and the loaded version replaces its predecessor.
func TestAlertSeries(t *testing.T) {
	m := New("v1")
	expo := func() string {
		var b strings.Builder
		m.WritePrometheus(&b)
		return b.String()
	}
	out := expo()
	if !strings.Contains(out, "k8secrets_agent_last_reload_successful 1\n") || !strings.Contains(out, "k8secrets_agent_reloads_refused_total 0\n") {
		t.Errorf("a new agent's exposition lacks last_reload_successful 1 or reloads_refused_total 0:\n%s", out)
	}
	if strings.Contains(out, "last_reload_success_timestamp_seconds") {
		t.Errorf("last_reload_success_timestamp_seconds exists before any reload:\n%s", out)
	}
	const dir = "/var/run/secrets/k8secrets/db"
	m.Reload("signal", errors.New("EPERM"), 0)
	m.ContentRefused(dir, true)
	m.ReloadRefused()
	m.Loaded(dir, "..2026_01_01_00_00_00.1", "")
	out = expo()
	for _, want := range []string{
		"k8secrets_agent_last_reload_successful 0\n",
		`k8secrets_agent_content_refused{path="` + dir + `"} 1` + "\n",
		"k8secrets_agent_reloads_refused_total 1\n",
		`k8secrets_agent_loaded_info{path="` + dir + `",version="..2026_01_01_00_00_00.1",content_id=""} 1` + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("exposition lacks %q:\n%s", want, out)
		}
	}
	m.Reload("signal", nil, 0)
	m.ReloadSucceeded(time.Unix(1700000000, 0))
	m.ContentRefused(dir, false)
	m.Loaded(dir, "..2026_01_01_00_00_01.2", "abababababababababababababababababababababababababababababababab")
	out = expo()
	for _, want := range []string{
		"k8secrets_agent_last_reload_successful 1\n",
		"k8secrets_agent_last_reload_success_timestamp_seconds 1700000000\n",
		`k8secrets_agent_content_refused{path="` + dir + `"} 0` + "\n",
		`k8secrets_agent_loaded_info{path="` + dir + `",version="..2026_01_01_00_00_01.2",content_id="abababababababababababababababababababababababababababababababab"} 1` + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("exposition lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "..2026_01_01_00_00_00.1") {
		t.Errorf("the version loaded before is still exposed:\n%s", out)
	}
}
