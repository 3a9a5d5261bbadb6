// Package promcheck holds the shipped Grafana dashboard's queries to what
// the binaries really export: each test scrapes a real agent or watch
// controller and checks the metric names, label matchers and matched values
// of the queries that name its metrics.
package promcheck

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
)

// Prefixes are the metric families of k8secrets: the agent's and the watch
// controller's. A query naming any other k8secrets_ metric is a problem.
var Prefixes = []string{"k8secrets_agent_", "k8secrets_watch_"}

// targetLabels are added by Prometheus to a scraped series (the target's);
// the binaries do not export them.
var targetLabels = map[string]bool{"namespace": true, "pod": true, "container": true, "job": true, "instance": true, "service": true, "endpoint": true}

var (
	selectorRE = regexp.MustCompile(`\b(k8secrets_[a-z0-9_]+)(\{[^}]*\})?`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
)

// DashboardExprs returns every PromQL expression of a Grafana dashboard
// (panel targets and template variable definitions).
func DashboardExprs(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
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
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				return nil, fmt.Errorf("%s: panel %q has a target without an expression", path, p.Title)
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
		return nil, fmt.Errorf("%s: no query", path)
	}
	return out, nil
}

// Series is what scrapes exported: per metric name, the label sets seen.
type Series map[string][]map[string]string

// Add records the series of a Prometheus text exposition.
func (s Series) Add(exposition string) {
	sc := bufio.NewScanner(strings.NewReader(exposition))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			line = line[:i]
		}
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

// Check holds the queries that name metrics of prefix to s. It returns how
// many selectors it checked and what does not hold: a metric s lacks, a
// label matcher (=, !=, =~, !~) no series of it has, a value matched with
// = that no series carries, or a k8secrets_ metric of no known family.
func Check(exprs []string, prefix string, s Series) (checked int, problems []string) {
	for _, e := range exprs {
		for _, m := range selectorRE.FindAllStringSubmatch(e, -1) {
			name, sel := m[1], m[2]
			if !known(name) {
				problems = append(problems, fmt.Sprintf("query %q names %s, of no k8secrets metric family", e, name))
				continue
			}
			if !strings.HasPrefix(name, prefix) {
				continue // another binary's test checks it
			}
			sets, ok := s[name]
			if !ok {
				problems = append(problems, fmt.Sprintf("query %q names %s, which is not exported", e, name))
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
					problems = append(problems, fmt.Sprintf("query %q matches %s{%s%s%q}, which no exported series has", e, name, label, op, value))
				}
			}
		}
	}
	return checked, problems
}

func known(name string) bool {
	for _, p := range Prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Scrape adds what GET url (a /metrics endpoint) exports to s.
func (s Series) Scrape(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	s.Add(string(b))
	return nil
}
