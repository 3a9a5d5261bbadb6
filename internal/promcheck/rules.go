package promcheck

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Rule is an alert of the shipped PrometheusRule in the one form the tests
// evaluate against a real binary's /metrics: max [by (labels)] (metric)
// compared with a number.
type Rule struct {
	Alert, For string
	Metric     string
	Op         string // "==" or ">"
	Value      float64
}

// Holds tells whether a sample of the rule's metric makes it hold.
func (r Rule) Holds(v float64) bool {
	if r.Op == ">" {
		return v > r.Value
	}
	return v == r.Value
}

var ruleExpr = regexp.MustCompile(`^max(?: by \([a-z_, ]+\))? \((k8secrets_[a-z_]+)\) (==|>) ([0-9]+)$`)

// AlertRules reads a PrometheusRule; an expression of another form is an
// error (no test would evaluate it).
func AlertRules(path string) ([]Rule, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pr struct {
		Kind string
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert, Expr, For string
				}
			}
		}
	}
	if err := yaml.Unmarshal(b, &pr); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if pr.Kind != "PrometheusRule" {
		return nil, fmt.Errorf("%s: kind %q; want PrometheusRule", path, pr.Kind)
	}
	var out []Rule
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			m := ruleExpr.FindStringSubmatch(strings.TrimSpace(r.Expr))
			if m == nil {
				return nil, fmt.Errorf("%s: alert %s: expression %q is not of the form the tests evaluate", path, r.Alert, r.Expr)
			}
			v, _ := strconv.ParseFloat(m[3], 64)
			out = append(out, Rule{Alert: r.Alert, For: r.For, Metric: m[1], Op: m[2], Value: v})
		}
	}
	return out, nil
}

// HoldsIn tells whether a series of the rule's metric among samples (each
// exported series, name and labels, to its value) makes the rule hold.
func (r Rule) HoldsIn(samples map[string]float64) bool {
	for series, v := range samples {
		if (series == r.Metric || strings.HasPrefix(series, r.Metric+"{")) && r.Holds(v) {
			return true
		}
	}
	return false
}

// Samples reads a /metrics endpoint: each exported series, name and
// labels, to its value.
func Samples(url string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}
