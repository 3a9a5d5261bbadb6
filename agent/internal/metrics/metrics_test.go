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
