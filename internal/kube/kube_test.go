package kube

import (
	"os"
	"path/filepath"
	"testing"
)

const kubeconfig = `apiVersion: v1
kind: Config
current-context: a
clusters:
- name: c1
  cluster: {server: "https://one.example:6443"}
- name: c2
  cluster: {server: "https://two.example:6443"}
users:
- name: u1
  user: {token: token-one}
- name: u2
  user: {token: token-two}
contexts:
- name: a
  context: {cluster: c1, user: u1, namespace: shop}
- name: b
  context: {cluster: c2, user: u2, namespace: web}
`

// TestConfigAsKubectl: the kubeconfig comes from KUBECONFIG (or
// --kubeconfig), and --context, --cluster and --user select from it as
// kubectl's flags of the same names do, the namespace being the context's.
func TestConfigAsKubectl(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config")
	if err := os.WriteFile(file, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                string
		env                 bool
		o                   Options
		host, token, wantNS string
	}{
		{"KUBECONFIG, its current context", true, Options{}, "https://one.example:6443", "token-one", "shop"},
		{"--kubeconfig", false, Options{Kubeconfig: file}, "https://one.example:6443", "token-one", "shop"},
		{"--context", true, Options{Context: "b"}, "https://two.example:6443", "token-two", "web"},
		{"--cluster overrides the context's", true, Options{Context: "b", Cluster: "c1"}, "https://one.example:6443", "token-two", "web"},
		{"--user overrides the context's", true, Options{User: "u2"}, "https://one.example:6443", "token-two", "shop"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env {
				t.Setenv("KUBECONFIG", file)
			} else {
				t.Setenv("KUBECONFIG", filepath.Join(dir, "missing"))
			}
			cfg, ns, err := Config(tt.o)
			if err != nil {
				t.Fatalf("Config(%+v) = %v", tt.o, err)
			}
			if cfg.Host != tt.host || cfg.BearerToken != tt.token || ns != tt.wantNS {
				t.Errorf("Config(%+v) = host %s, token of %s, namespace %s; want %s, %s, %s", tt.o, cfg.Host, tokenName(cfg.BearerToken), ns, tt.host, tokenName(tt.token), tt.wantNS)
			}
		})
	}
}

// tokenName names a test token without printing it.
func tokenName(tok string) string {
	switch tok {
	case "token-one":
		return "u1"
	case "token-two":
		return "u2"
	}
	return "another user"
}
