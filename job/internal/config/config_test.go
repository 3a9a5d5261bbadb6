package config

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseSpellingsAndDefaults(t *testing.T) {
	for _, args := range [][]string{
		{"inject", "-l", "app=web", "--secret", "db-creds"},
		{"inject", "--selector=app=web", "--secret=db-creds"},
		{"inject", "--pod_labels", "app=web", "--secret_name", "db-creds"},
		{"inject", "--pod-labels", "app=web", "--secret-name", "db-creds"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cfg, err := Parse(args, envOf(nil), io.Discard)
			if err != nil {
				t.Fatalf("Parse(%q) = %v", args, err)
			}
			if cfg.Command != Inject || cfg.Selector != "app=web" || cfg.Secret != "db-creds" {
				t.Errorf("Parse(%q) = command %q selector %q secret %q; want inject app=web db-creds", args, cfg.Command, cfg.Selector, cfg.Secret)
			}
			if cfg.MountPath != "/var/run/secrets/k8secrets/db-creds" || !cfg.Agent || cfg.Reload != "restart" || cfg.Timeout != 5*time.Minute || cfg.Output != "text" {
				t.Errorf("defaults = %+v", cfg)
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "k8secrets.yaml")
	if err := os.WriteFile(file, []byte("timeout: 1m\nreload: signal:SIGHUP\nmount-path: /from/file\noutput: json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := envOf(map[string]string{
		"K8SECRETS_TIMEOUT":      "2m",
		"K8SECRETS_RELOAD":       "http:http://localhost:8080/reload",
		"K8SECRETS_SELECTOR":     "app=env",
		"K8SECRETS_SECRET":       "from-env",
		"K8SECRETS_CONTAINER":    "a,b",
		"K8SECRETS_AGENT":        "false",
		"K8SECRETS_LOG_FORMAT":   "json",
		"K8SECRETS_MAX_PARALLEL": "4",
	})
	cfg, err := Parse([]string{"inject", "--config", file, "--timeout", "3m", "--secret", "from-flag"}, env, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"flag beats env and file", cfg.Timeout, 3 * time.Minute},
		{"flag beats env", cfg.Secret, "from-flag"},
		{"env beats file", cfg.Reload, "http:http://localhost:8080/reload"},
		{"env alone", cfg.Selector, "app=env"},
		{"env list", strings.Join(cfg.Containers, ","), "a,b"},
		{"env bool", cfg.Agent, false},
		{"file alone", cfg.MountPath, "/from/file"},
		{"file alone", cfg.Output, "json"},
		{"env beats default", cfg.LogFormat, "json"},
		{"env int", cfg.MaxParallel, 4},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v; want %v", c.name, c.got, c.want)
		}
	}
}

func TestNoAgent(t *testing.T) {
	cfg, err := Parse([]string{"inject", "-l", "a=b", "--secret", "s", "--no-agent"}, envOf(nil), io.Discard)
	if err != nil || cfg.Agent {
		t.Fatalf("Parse(--no-agent) = agent %v, %v; want false, nil", cfg.Agent, err)
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string // every problem is reported at once
	}{
		{"no command", nil, []string{"no command"}},
		{"unknown command", []string{"explode"}, []string{"unknown command"}},
		{"unknown flag", []string{"inject", "--bogus"}, []string{"unknown flag"}},
		{"empty selector", []string{"inject", "--secret", "s"}, []string{"--selector is required"}},
		{"blank selector", []string{"inject", "-l", " ", "--secret", "s"}, []string{"--selector is required"}},
		{"bad selector", []string{"inject", "-l", "app in (", "--secret", "s"}, []string{`--selector "app in ("`}},
		{"bad selector operator", []string{"inject", "-l", "app=~web", "--secret", "s"}, []string{"--selector"}},
		{"missing secret", []string{"inject", "-l", "a=b"}, []string{"--secret is required"}},
		{"bad secret name", []string{"inject", "-l", "a=b", "--secret", "Bad_Name"}, []string{`--secret "Bad_Name"`}},
		{"bad namespace", []string{"inject", "-l", "a=b", "--secret", "s", "-n", "a.b"}, []string{`--namespace "a.b"`}},
		{"relative mount path", []string{"inject", "-l", "a=b", "--secret", "s", "--mount-path", "etc/x"}, []string{"absolute"}},
		{"dotdot mount path", []string{"inject", "-l", "a=b", "--secret", "s", "--mount-path", "/etc/../x"}, []string{"'..'"}},
		{"colon mount path", []string{"inject", "-l", "a=b", "--secret", "s", "--mount-path", "/a:b"}, []string{"':'"}},
		{"bad container", []string{"inject", "-l", "a=b", "--secret", "s", "--container", "Web_1"}, []string{`--container "Web_1"`}},
		{"bad reload", []string{"inject", "-l", "a=b", "--secret", "s", "--reload", "reboot"}, []string{`--reload "reboot"`}},
		{"bad signal", []string{"inject", "-l", "a=b", "--secret", "s", "--reload", "signal:"}, []string{"not a signal name"}},
		{"misspelt signal", []string{"inject", "-l", "a=b", "--secret", "s", "--reload", "signal:SIGHUPP"}, []string{`"SIGHUPP" is not a signal name`}},
		{"bad http", []string{"inject", "-l", "a=b", "--secret", "s", "--reload", "http:localhost"}, []string{"http:URL"}},
		{"empty agent image", []string{"inject", "-l", "a=b", "--secret", "s", "--agent-image", ""}, []string{"--agent-image"}},
		{"bad timeout", []string{"inject", "-l", "a=b", "--secret", "s", "--timeout", "0s"}, []string{"--timeout"}},
		{"zero max-parallel", []string{"inject", "-l", "a=b", "--secret", "s", "--max-parallel", "0"}, []string{"--max-parallel 0"}},
		{"bad output", []string{"inject", "-l", "a=b", "--secret", "s", "-o", "yaml"}, []string{"--output"}},
		{"bad log format", []string{"inject", "-l", "a=b", "--secret", "s", "--log-format", "xml"}, []string{"--log-format"}},
		{"several at once", []string{"inject", "-l", "a in (", "--secret", "X", "--mount-path", "rel"}, []string{"--selector", "--secret", "--mount-path"}},
		{"remove without selector", []string{"remove", "--secret", "s"}, []string{"--selector is required"}},
		{"positional arg", []string{"status", "extra"}, []string{"unknown command"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.args, envOf(nil), io.Discard)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %v; want ErrInvalid", tc.args, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Parse(%q) = %q; want it to mention %q", tc.args, err, w)
				}
			}
		})
	}
}

func TestBadConfigFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("selecter: app=web\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Parse([]string{"inject", "--config", file, "-l", "a=b", "--secret", "s"}, envOf(nil), io.Discard)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `unknown key "selecter"`) {
		t.Fatalf("Parse(config with a typo) = %v; want ErrInvalid naming the key", err)
	}
	_, err = Parse([]string{"inject", "--config", "/nonexistent.yaml", "-l", "a=b", "--secret", "s"}, envOf(nil), io.Discard)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Parse(missing config file) = %v; want ErrInvalid", err)
	}
}

func TestHelp(t *testing.T) {
	var out strings.Builder
	_, err := Parse([]string{"--help"}, envOf(nil), &out)
	if !errors.Is(err, ErrHelp) {
		t.Fatalf("Parse(--help) = %v; want ErrHelp", err)
	}
	for _, w := range []string{"Exit codes:", "7  another run holds the lock", "inject", "remove", "status"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("--help output lacks %q", w)
		}
	}
	out.Reset()
	if _, err := Parse([]string{"inject", "-h"}, envOf(nil), &out); !errors.Is(err, ErrHelp) || !strings.Contains(out.String(), "--pod") && !strings.Contains(out.String(), "--selector") {
		t.Errorf("Parse(inject -h) = %v, output %q", err, out.String())
	}
}
