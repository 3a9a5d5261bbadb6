package promcheck

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	s := Series{}
	s.Add(`# TYPE k8secrets_agent_reloads_total counter
k8secrets_agent_reloads_total{action="http",result="success"} 3
k8secrets_agent_reloads_total{action="http",result="failure"} 1
k8secrets_agent_last_reload_successful 1
`)
	for _, tc := range []struct {
		expr, problem string
	}{
		{`sum by (namespace) (rate(k8secrets_agent_reloads_total{namespace=~"$namespace", result="failure"}[5m]))`, ""},
		{`k8secrets_agent_last_reload_successful == 0`, ""},
		{`k8secrets_watch_leader`, ""}, // another binary's: not checked here
		{`k8secrets_agent_reload_total`, "not exported"},
		{`k8secrets_agent_reloads_total{result="failed"}`, "no exported series has"},
		{`k8secrets_agent_reloads_total{kind=~"h.*"}`, "no exported series has"},
		{`k8secrets_reloads_total`, "no k8secrets metric family"},
	} {
		_, problems := Check([]string{tc.expr}, "k8secrets_agent_", s)
		got := strings.Join(problems, "\n")
		if tc.problem == "" && got != "" || tc.problem != "" && !strings.Contains(got, tc.problem) {
			t.Errorf("Check(%s) = %q; want a problem containing %q", tc.expr, got, tc.problem)
		}
	}
}
