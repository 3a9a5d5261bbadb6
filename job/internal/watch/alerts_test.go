package watch

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/k8secrets/k8secrets/internal/promcheck"
)

// TestAlertRules evaluates the watch's alerts of the shipped PrometheusRule
// against the controller's /metrics: none holds while it leads and every
// pod is verified; each holds in the state it is for (no leader, stale
// pods, an open breaker).
func TestAlertRules(t *testing.T) {
	all, err := promcheck.AlertRules("../../../manifests/monitoring/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rules := map[string]promcheck.Rule{}
	for _, r := range all {
		if strings.HasPrefix(r.Metric, "k8secrets_watch_") {
			rules[r.Alert] = r
		}
	}
	for _, want := range []string{"K8secretsWatchNoLeader", "K8secretsWatchStalePods", "K8secretsWatchBreakerOpen"} {
		if _, ok := rules[want]; !ok {
			t.Errorf("no alert %s", want)
		}
	}
	r := newRig(t)
	srv := httptest.NewServer((&Serve{Metrics: r.c.m}).Handler())
	defer srv.Close()
	firing := func() map[string]bool {
		samples, err := promcheck.Samples(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for name, rule := range rules {
			if rule.HoldsIn(samples) {
				out[name] = true
			}
		}
		return out
	}

	// Leading, a rotation verified on every pod.
	r.c.m.leader(true)
	r.update("v1", nil)
	if len(r.rotations) != 1 {
		t.Fatalf("rotations %v; want one", r.rotations)
	}
	if f := firing(); len(f) != 0 {
		t.Errorf("alert conditions hold for a leading watch with every pod verified: %v", f)
	}

	// A rotation that leaves a pod stale, a flapping Secret, no leader.
	r.c.verify = func(context.Context, string, string, string, func(context.Context) (*corev1.Secret, error)) (Verdict, error) {
		return Verdict{Verified: 1, Total: 2, Stale: []string{"web-1 (failed: status 500)"}}, nil
	}
	r.step(10 * time.Second) // past --min-interval
	r.update("v2", nil)
	if f := firing(); !f["K8secretsWatchStalePods"] || len(f) != 1 {
		t.Errorf("after a rotation that left a pod stale: %v; want K8secretsWatchStalePods alone", f)
	}
	for i := range 12 {
		r.update(fmt.Sprintf("v%d", i+3), nil)
		r.step(time.Second)
	}
	r.c.m.leader(false)
	f := firing()
	for name := range rules {
		if !f[name] {
			t.Errorf("alert %s does not hold in the state it is for", name)
		}
	}
}
