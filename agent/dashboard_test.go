package main

import (
	"strings"
	"testing"

	"github.com/k8secrets/k8secrets/internal/promcheck"
)

// TestDashboardQueriesNameExportedMetrics scrapes a real agent through a
// success, a failed reload and refused content, and checks that every
// k8secrets_agent_ metric the Grafana dashboard queries is one the agent
// exports, with the labels and label values the queries match on.
func TestDashboardQueriesNameExportedMetrics(t *testing.T) {
	exprs, err := promcheck.DashboardExprs("../manifests/monitoring/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	f := startTLSAndCreds(t)
	a, srv, credsVol, tlsDir := f.agent, f.srv, f.credsVol, f.tlsDir

	got := promcheck.Series{}
	scrape := func() {
		if err := got.Scrape("http://" + a.addr + "/metrics"); err != nil {
			t.Fatal(err)
		}
	}
	scrape()
	// A success.
	write(t, credsVol, secretPayload("two"))
	waitFor(t, "a successful reload", func() bool {
		return a.samples(t)["k8secrets_agent_last_reload_success_timestamp_seconds"] > 0
	})
	scrape()
	// A failure, and refused content.
	srv.mu.Lock()
	srv.fail = 1 << 30
	srv.mu.Unlock()
	write(t, f.tlsVol, map[string]string{"tls.crt": f.crt, "tls.key": f.otherKey})
	write(t, credsVol, secretPayload("three"))
	waitFor(t, "a failed reload and refused content", func() bool {
		s := a.samples(t)
		return s["k8secrets_agent_last_reload_successful"] == 0 && s[`k8secrets_agent_content_refused{path="`+tlsDir+`"}`] == 1
	})
	scrape()

	checked, problems := promcheck.Check(exprs, "k8secrets_agent_", got)
	if len(problems) > 0 {
		t.Error(strings.Join(problems, "\n"))
	}
	if checked == 0 {
		t.Fatal("no agent metric found in the dashboard's queries")
	}
}
