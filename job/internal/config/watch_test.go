package config

import (
	"errors"
	"fmt"
	"io"
	"testing"
	"time"
)

func TestParseWatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // fmt of Namespaces, MinInterval, BreakerChanges, BreakerWindow; or "invalid"
	}{
		{"defaults", []string{"watch"}, nil, "[] 10s 10 5m0s"},
		{"namespaces repeated and listed", []string{"watch", "-n", "a,b", "--namespace", "c"}, nil, "[a b c] 10s 10 5m0s"},
		{"all namespaces", []string{"watch", "-A"}, nil, "[] 10s 10 5m0s"},
		{"from the environment", []string{"watch"}, map[string]string{"K8SECRETS_NAMESPACE": "x,y", "K8SECRETS_MIN_INTERVAL": "30s", "K8SECRETS_BREAKER_CHANGES": "3"}, "[x y] 30s 3 5m0s"},
		{"a duration without its unit", []string{"watch"}, map[string]string{"K8SECRETS_MIN_INTERVAL": "300"}, "invalid"},
		{"all namespaces and a namespace", []string{"watch", "-A", "-n", "a"}, nil, "invalid"},
		{"a bad namespace", []string{"watch", "-n", "Not_A_Label"}, nil, "invalid"},
		{"no interval", []string{"watch", "--min-interval", "0s"}, nil, "invalid"},
		{"no breaker", []string{"watch", "--breaker-changes", "0"}, nil, "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse(tc.args, envOf(tc.env), io.Discard)
			got := "invalid"
			if err == nil {
				w := cfg.Watch
				ns := w.Namespaces
				if w.AllNamespaces && len(ns) == 1 && ns[0] == "" {
					ns = nil
				}
				got = fmt.Sprintf("%v %s %d %s", ns, w.MinInterval, w.BreakerChanges, w.BreakerWindow)
				if cfg.Command != WatchCommand || cfg.Namespace != "" || cfg.Settle != 6*time.Minute || w.Listen != ":9534" || w.LeaseName != "k8secrets-watch" {
					t.Errorf("Parse(%q) = %+v", tc.args, cfg)
				}
			} else if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %v; want nil or ErrInvalid", tc.args, err)
			}
			if got != tc.want {
				t.Errorf("Parse(%q) = %s (%v); want %s", tc.args, got, err, tc.want)
			}
		})
	}
	cfg, _ := Parse([]string{"watch", "-A"}, envOf(nil), io.Discard)
	if fmt.Sprintf("%q", cfg.Watch.Namespaces) != `[""]` {
		t.Errorf("-A: Namespaces %q; want [\"\"] (every namespace)", cfg.Watch.Namespaces)
	}
}
