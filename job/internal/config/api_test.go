package config

import (
	"errors"
	"fmt"
	"io"
	"testing"
)

// The watch's client gets its own defaults, larger than the other
// commands'; flags, the environment and a file set them through the
// flag's own parser.
func TestParseKubeAPILimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // "QPS Burst", or "invalid"
	}{
		{"watch defaults", []string{"watch"}, nil, "500 1000"},
		{"inject defaults", []string{"inject", "-l", "app=web", "--secret", "db"}, nil, "100 200"},
		{"refresh defaults", []string{"refresh", "--secret", "db"}, nil, "100 200"},
		{"status defaults", []string{"status"}, nil, "100 200"},
		{"flags", []string{"watch", "--kube-api-qps", "50.5", "--kube-api-burst", "60"}, nil, "50.5 60"},
		{"from the environment", []string{"watch"}, map[string]string{"K8SECRETS_KUBE_API_QPS": "100", "K8SECRETS_KUBE_API_BURST": "200"}, "100 200"},
		{"the flag wins over the environment", []string{"watch", "--kube-api-qps=30"}, map[string]string{"K8SECRETS_KUBE_API_QPS": "100"}, "30 1000"},
		{"not a number", []string{"watch"}, map[string]string{"K8SECRETS_KUBE_API_QPS": "fast"}, "invalid"},
		{"zero QPS", []string{"watch", "--kube-api-qps=0"}, nil, "invalid"},
		{"negative QPS", []string{"watch", "--kube-api-qps=-1"}, nil, "invalid"},
		{"NaN QPS", []string{"watch", "--kube-api-qps=NaN"}, nil, "invalid"},
		{"zero burst", []string{"refresh", "--secret", "db", "--kube-api-burst=0"}, nil, "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse(tc.args, envOf(tc.env), io.Discard)
			got := "invalid"
			if err == nil {
				got = fmt.Sprintf("%v %d", cfg.KubeAPIQPS, cfg.KubeAPIBurst)
			} else if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %v; want nil or ErrInvalid", tc.args, err)
			}
			if got != tc.want {
				t.Errorf("Parse(%q) = %s (%v); want %s", tc.args, got, err, tc.want)
			}
		})
	}
}
