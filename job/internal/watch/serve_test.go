package watch

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestServeEndpoints(t *testing.T) {
	m := NewMetrics()
	s := &Serve{Metrics: m}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d; want 200", code)
	}
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz before the informers synced = %d; want 503", code)
	}
	s.ready.Store(true)
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz once ready = %d; want 200", code)
	}
	m.rotation("verified")
	m.breaker("ns", "db", true)
	m.latency(1500e6)
	_, body := get("/metrics")
	for _, want := range []string{
		`k8secrets_watch_rotations_total{result="verified"} 1`,
		`k8secrets_watch_rotations_total{result="stale"} 0`,
		`k8secrets_watch_rotations_total{result="unknown"} 0`,
		`k8secrets_watch_breaker_open{namespace="ns",secret="db"} 1`,
		`k8secrets_watch_breaker_trips_total 1`,
		`k8secrets_watch_update_to_verified_seconds_bucket{le="2.5"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, body)
		}
	}
}
