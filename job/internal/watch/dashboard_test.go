package watch

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/internal/promcheck"
)

// TestDashboardQueriesNameExportedMetrics runs the controller through
// rotations and a breaker trip (a Secret changed every second), scrapes its
// /metrics as the watch serves them, and checks that every k8secrets_watch_
// metric the Grafana dashboard queries is exported, with the labels and
// label values the queries match on.
func TestDashboardQueriesNameExportedMetrics(t *testing.T) {
	exprs, err := promcheck.DashboardExprs("../../../manifests/monitoring/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t)
	r.c.m.leader(true) // what Run does on winning the election
	for i := range 12 {
		r.update(fmt.Sprintf("v%d", i+1), nil)
		r.step(time.Second)
	}
	if !r.c.pace.Open("ns/db") || len(r.rotations) == 0 {
		t.Fatalf("want rotations and an open breaker; rotations %v, open %v", r.rotations, r.c.pace.Open("ns/db"))
	}
	srv := httptest.NewServer((&Serve{Metrics: r.c.m}).Handler())
	defer srv.Close()
	got := promcheck.Series{}
	if err := got.Scrape(srv.URL + "/metrics"); err != nil {
		t.Fatal(err)
	}
	checked, problems := promcheck.Check(exprs, "k8secrets_watch_", got)
	if len(problems) > 0 {
		t.Error(strings.Join(problems, "\n"))
	}
	if checked == 0 {
		t.Fatal("no watch metric found in the dashboard's queries")
	}
}
