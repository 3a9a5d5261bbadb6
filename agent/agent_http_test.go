package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/agent/internal/certs"
	"github.com/k8secrets/k8secrets/agent/internal/kubelettest"
	"github.com/k8secrets/k8secrets/internal/promcheck"
)

// TestCertificateAheadReloadedWhenValid: a certificate whose NotBefore is
// beyond the allowed skew is refused, then reloaded when the clock reaches
// it, with no further write.
func TestCertificateAheadReloadedWhenValid(t *testing.T) {
	now := time.Now()
	crt, key := tlsPair(t, now.Add(-time.Hour), now.Add(time.Hour))
	dir := filepath.Join(t.TempDir(), "tls")
	vol := newVolume(t, dir, map[string]string{"tls.crt": crt, "tls.key": key})
	srv := newAppServer(t, dir)
	cfg := testConfig(dir)
	cfg.Reload = []string{"http:" + srv.url}
	cfg.MinInterval = 0
	a := startAgent(t, cfg)

	// Whole seconds: a certificate holds no fraction.
	validAt := time.Now().Add(3 * time.Second).Truncate(time.Second)
	aheadCrt, aheadKey := tlsPair(t, validAt.Add(certs.Skew), validAt.Add(time.Hour))
	write(t, vol, map[string]string{"tls.crt": aheadCrt, "tls.key": aheadKey})
	refused := `k8secrets_agent_content_refused{path="` + dir + `"}`
	waitFor(t, "the refusal", func() bool { return a.metric(t, refused) == 1 })
	if time.Now().After(validAt) {
		t.Skip("the machine is too slow to see the refusal before the certificate became valid")
	}
	if c := srv.calls(); len(c) != 0 {
		t.Fatalf("%d reloads of a certificate not valid yet; want 0", len(c))
	}
	waitFor(t, "the reload once valid", func() bool { return len(srv.calls()) == 1 })
	if time.Now().Before(validAt) {
		t.Errorf("reloaded before the certificate was valid (NotBefore - skew = %s)", validAt.Format(time.RFC3339Nano))
	}
	time.Sleep(quiet)
	if c := srv.calls(); len(c) != 1 {
		t.Errorf("%d reloads; want 1", len(c))
	}
	if v := a.metric(t, refused); v != 0 {
		t.Errorf("content_refused = %v once valid; want 0", v)
	}
	target, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	if v := a.metric(t, `k8secrets_agent_loaded_info{path="`+dir+`",version="`+filepath.Base(target)+`",content_id=""}`); v != 1 {
		t.Errorf("loaded_info of %s = %v; want 1", filepath.Base(target), v)
	}
}

// TestAlertRules evaluates the shipped PrometheusRule against a real
// agent's /metrics: neither alert's condition holds while all is well, and
// each holds in the state it is for (a reload failing, content refused).
func TestAlertRules(t *testing.T) {
	rules := alertRules(t)
	f := startTLSAndCreds(t)
	a, srv, tlsVol, credsVol, crt, key, otherKey := f.agent, f.srv, f.tlsVol, f.credsVol, f.crt, f.key, f.otherKey
	now := f.now

	firing := func() map[string]bool {
		samples := a.samples(t)
		out := map[string]bool{}
		for name, r := range rules {
			if r.HoldsIn(samples) {
				out[name] = true
			}
		}
		return out
	}
	if f := firing(); len(f) != 0 {
		t.Errorf("alert conditions hold for a healthy agent: %v", f)
	}
	if strings.Contains(strings.Join(keys(a.samples(t)), " "), "last_reload_success_timestamp_seconds") {
		t.Error("last_reload_success_timestamp_seconds exists before any reload")
	}

	// A refused TLS pair, and a reload of the other directory that fails.
	srv.mu.Lock()
	srv.fail = 1 << 30
	srv.mu.Unlock()
	write(t, tlsVol, map[string]string{"tls.crt": crt, "tls.key": otherKey})
	write(t, credsVol, secretPayload("two"))
	waitFor(t, "both alert conditions", func() bool {
		f := firing()
		return f["K8secretsAgentReloadFailing"] && f["K8secretsAgentContentRefused"]
	})

	// Fixed: the retry succeeds, the pair is valid; neither holds.
	srv.mu.Lock()
	srv.fail = 0
	srv.mu.Unlock()
	write(t, tlsVol, map[string]string{"tls.crt": crt, "tls.key": key})
	waitFor(t, "no alert condition", func() bool { return len(firing()) == 0 })
	if a.metric(t, "k8secrets_agent_last_reload_success_timestamp_seconds") < float64(now.Unix()) {
		t.Error("last_reload_success_timestamp_seconds not set after a success")
	}
}

// tlsAndCreds is an agent watching a TLS pair and a credentials directory,
// reloading an app server by HTTP with no --min-interval.
type tlsAndCreds struct {
	agent              *agent
	srv                *appServer
	tlsVol, credsVol   *kubelettest.Writer
	tlsDir             string
	crt, key, otherKey string // otherKey does not match crt
	now                time.Time
}

func startTLSAndCreds(t *testing.T) tlsAndCreds {
	t.Helper()
	root := t.TempDir()
	f := tlsAndCreds{tlsDir: filepath.Join(root, "tls"), now: time.Now()}
	credsDir := filepath.Join(root, "db-creds")
	f.crt, f.key = tlsPair(t, f.now.Add(-time.Hour), f.now.Add(time.Hour))
	_, f.otherKey = tlsPair(t, f.now.Add(-time.Hour), f.now.Add(time.Hour))
	f.tlsVol = newVolume(t, f.tlsDir, map[string]string{"tls.crt": f.crt, "tls.key": f.key})
	f.credsVol = newVolume(t, credsDir, secretPayload("one"))
	f.srv = newAppServer(t, credsDir)
	cfg := testConfig(f.tlsDir, credsDir)
	cfg.Reload = []string{"http:" + f.srv.url}
	cfg.MinInterval = 0
	f.agent = startAgent(t, cfg)
	return f
}

// alertRules reads the agent's alerts of manifests/monitoring/prometheusrule.yaml.
func alertRules(t *testing.T) map[string]promcheck.Rule {
	t.Helper()
	rules, err := promcheck.AlertRules("../manifests/monitoring/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]promcheck.Rule{}
	for _, r := range rules {
		if !strings.HasPrefix(r.Metric, "k8secrets_agent_") {
			continue
		}
		if r.For != "5m" {
			t.Errorf("alert %s: for %q; want 5m", r.Alert, r.For)
		}
		out[r.Alert] = r
	}
	for _, want := range []string{"K8secretsAgentReloadFailing", "K8secretsAgentContentRefused"} {
		if _, ok := out[want]; !ok {
			t.Errorf("no alert %s", want)
		}
	}
	return out
}

// samples is every sample of /metrics, by series.
func (a *agent) samples(t *testing.T) map[string]float64 {
	t.Helper()
	out, err := promcheck.Samples("http://" + a.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func keys(m map[string]float64) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

// TestRefusedAtStart: configurations the agent cannot work with exit 2
// before anything runs.
func TestRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "password")
	notPEM := filepath.Join(dir, "ca.crt")
	for _, p := range []string{file, notPEM} {
		if err := os.WriteFile(p, []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		args []string
		out  string
	}{
		{"watch a file", []string{"--watch=" + file, "--reload=restart"}, "is a file, not a directory"},
		{"CA file missing", []string{"--watch=" + dir, "--reload=http:https://127.0.0.1/-/reload", "--http-ca-file=" + filepath.Join(dir, "nope")}, "--http-ca-file"},
		{"CA file without a certificate", []string{"--watch=" + dir, "--reload=http:https://127.0.0.1/-/reload", "--http-ca-file=" + notPEM}, "no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, out := agentProcess(t, append(tt.args, "--listen=127.0.0.1:0")...)
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != 2 || !strings.Contains(out.String(), tt.out) {
				t.Errorf("exit %d with %q; want exit 2 with %q", code, out, tt.out)
			}
		})
	}
}
