package main

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// Labels that Prometheus adds to a scraped series (the target's), which
// the agent itself does not export.
var targetLabels = map[string]bool{"namespace": true, "pod": true, "container": true, "job": true, "instance": true, "service": true, "endpoint": true}

// selectorRE finds a metric name and its optional label matchers in a
// PromQL expression.
var (
	selectorRE = regexp.MustCompile(`\b(k8secrets_[a-z0-9_]+)(\{[^}]*\})?`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
)

// dashboardExprs returns every PromQL expression of the Grafana dashboard
// (panel targets and template variable queries).
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../manifests/monitoring/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q has a target without an expression", p.Title)
			}
			out = append(out, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Definition != "" {
			out = append(out, v.Definition)
		}
	}
	if len(out) == 0 {
		t.Fatal("the dashboard has no query")
	}
	return out
}

// series is what a scrape exported: per metric name, the label sets seen.
type series map[string][]map[string]string

func (s series) add(samples map[string]float64) {
	for line := range samples {
		name, labels := line, map[string]string{}
		if i := strings.IndexByte(line, '{'); i >= 0 {
			name = line[:i]
			for _, m := range matcherRE.FindAllStringSubmatch(line[i:], -1) {
				labels[m[1]] = m[3]
			}
		}
		s[name] = append(s[name], labels)
	}
}

// TestDashboardQueriesNameExportedMetrics scrapes a real agent through a
// success, a failed reload and refused content, and checks that every
// k8secrets_agent_ metric the dashboard queries is one the agent exports,
// with the labels and label values the queries match on.
func TestDashboardQueriesNameExportedMetrics(t *testing.T) {
	exprs := dashboardExprs(t)

	f := startTLSAndCreds(t)
	a, srv, credsVol, tlsDir := f.agent, f.srv, f.credsVol, f.tlsDir

	got := series{}
	got.add(a.samples(t))
	// A success.
	write(t, credsVol, secretPayload("two"))
	waitFor(t, "a successful reload", func() bool {
		return a.samples(t)["k8secrets_agent_last_reload_success_timestamp_seconds"] > 0
	})
	got.add(a.samples(t))
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
	got.add(a.samples(t))

	checked := 0
	for _, e := range exprs {
		for _, m := range selectorRE.FindAllStringSubmatch(e, -1) {
			name, sel := m[1], m[2]
			if !strings.HasPrefix(name, "k8secrets_agent_") {
				t.Errorf("query %q names %s: not an agent metric, and no test checks it", e, name)
				continue
			}
			sets, ok := got[name]
			if !ok {
				t.Errorf("query %q names %s, which the agent does not export", e, name)
				continue
			}
			checked++
			for _, lm := range matcherRE.FindAllStringSubmatch(sel, -1) {
				label, op, value := lm[1], lm[2], lm[3]
				if targetLabels[label] {
					continue
				}
				found := false
				for _, ls := range sets {
					if v, ok := ls[label]; ok && (op != "=" || v == value) {
						found = true
					}
				}
				if !found {
					t.Errorf("query %q matches %s{%s%s%q}, which no exported series has", e, name, label, op, value)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no agent metric found in the dashboard's queries")
	}
}
