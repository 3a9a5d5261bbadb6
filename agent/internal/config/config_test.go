package config

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte("watch: [/from/file]\nmin-interval: 3s\nhttp-method: PUT\nresync-period: 5m\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, c Config)
	}{
		{
			name: "defaults",
			args: []string{"--watch=/var/run/secrets/k8secrets/db-creds", "--reload=restart"},
			check: func(t *testing.T, c Config) {
				want := Default()
				want.Watch = []string{"/var/run/secrets/k8secrets/db-creds"}
				want.Reload = []string{"restart"}
				if !equal(c, want) {
					t.Errorf("Load() = %+v; want %+v", c, want)
				}
			},
		},
		{
			name: "repeatable flags keep commas",
			args: []string{"--watch", "/a", "--watch", "/b", "--reload", "signal:SIGHUP", "--reload", "exec:/bin/sh -c 'a, b'", "--process", "nginx"},
			check: func(t *testing.T, c Config) {
				if !slices.Equal(c.Watch, []string{"/a", "/b"}) || !slices.Equal(c.Reload, []string{"signal:SIGHUP", "exec:/bin/sh -c 'a, b'"}) {
					t.Errorf("Load() = watch %q, reload %q", c.Watch, c.Reload)
				}
			},
		},
		{
			name: "environment",
			args: nil,
			env:  map[string]string{"K8SECRETS_AGENT_WATCH": "/a,/b", "K8SECRETS_AGENT_RELOAD": "http:http://127.0.0.1:8080/-/reload", "K8SECRETS_AGENT_MIN_INTERVAL": "250ms", "K8SECRETS_AGENT_VALIDATE": "none"},
			check: func(t *testing.T, c Config) {
				if !slices.Equal(c.Watch, []string{"/a", "/b"}) || c.MinInterval != 250*time.Millisecond || c.Validation != "none" {
					t.Errorf("Load() = watch %q, min-interval %v, validate %q", c.Watch, c.MinInterval, c.Validation)
				}
			},
		},
		{
			name: "flags win over environment, environment over file",
			args: []string{"--config", file, "--reload=restart", "--min-interval=2s"},
			env:  map[string]string{"K8SECRETS_AGENT_MIN_INTERVAL": "250ms", "K8SECRETS_AGENT_HTTP_METHOD": "PATCH"},
			check: func(t *testing.T, c Config) {
				if c.MinInterval != 2*time.Second || c.HTTPMethod != "PATCH" || c.ResyncPeriod != 5*time.Minute || !slices.Equal(c.Watch, []string{"/from/file"}) {
					t.Errorf("Load() = min-interval %v, method %s, resync %v, watch %q", c.MinInterval, c.HTTPMethod, c.ResyncPeriod, c.Watch)
				}
			},
		},
		{
			name:  "version subcommand",
			args:  []string{"version"},
			check: func(t *testing.T, c Config) { checkVersion(t, c) },
		},
		{
			name:  "version flag",
			args:  []string{"--version"},
			check: func(t *testing.T, c Config) { checkVersion(t, c) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c, err := Load(tt.args, io.Discard)
			if err != nil {
				t.Fatalf("Load(%q) error = %v", tt.args, err)
			}
			tt.check(t, c)
		})
	}
}

func checkVersion(t *testing.T, c Config) {
	t.Helper()
	if !c.Version {
		t.Error("Version = false; want true")
	}
}

func equal(a, b Config) bool {
	return slices.Equal(a.Watch, b.Watch) && slices.Equal(a.Reload, b.Reload) &&
		a.Process == b.Process && a.PIDFile == b.PIDFile && a.HTTPMethod == b.HTTPMethod &&
		a.HTTPSuccessCodes == b.HTTPSuccessCodes && a.HTTPTimeout == b.HTTPTimeout &&
		a.ExecTimeout == b.ExecTimeout && a.RestartGrace == b.RestartGrace &&
		a.RestartJitter == b.RestartJitter && a.MinInterval == b.MinInterval &&
		a.ResyncPeriod == b.ResyncPeriod && a.Validation == b.Validation && a.Listen == b.Listen &&
		a.LogFormat == b.LogFormat && a.BackoffInitial == b.BackoffInitial && a.BackoffMax == b.BackoffMax
}

func TestLoadReportsEveryProblem(t *testing.T) {
	t.Setenv("K8SECRETS_AGENT_RESYNC_PERIOD", "soon")
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, []byte("min-intervall: 2s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load([]string{"--config=" + file,
		"--reload=signal:SIGNOPE", "--reload=http:ftp://x", "--reload=bounce",
		"--process=a", "--pidfile=b", "--http-success-codes=2xx,abc", "--http-timeout=0s",
		"--min-interval=-1s", "--validate=maybe", "--listen=9533", "--log-format=xml",
	}, io.Discard)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Load() = %v; want ErrInvalid", err)
	}
	for _, want := range []string{
		"--watch: at least one", `"SIGNOPE" is not a signal`, `"ftp://x" is not an http`, `"bounce": not one of`,
		"--process and --pidfile", "--http-success-codes", "--http-timeout: must be positive",
		"--min-interval: must not be negative", `--resync-period: "soon" is not a duration`,
		"--validate", "--listen", "--log-format", `unknown key "min-intervall"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Load() error lacks %q:\n%v", want, err)
		}
	}
}

func TestLoadHelpAndBadFlags(t *testing.T) {
	var out strings.Builder
	if _, err := Load([]string{"--help"}, &out); !errors.Is(err, ErrHelp) {
		t.Fatalf("Load(--help) = %v; want ErrHelp", err)
	}
	if !strings.Contains(out.String(), "parent PID is 0") {
		t.Error("--help does not document the default target processes")
	}
	if _, err := Load([]string{"--nope"}, io.Discard); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Load(--nope) = %v; want ErrInvalid", err)
	}
}

func TestParseCodes(t *testing.T) {
	tests := []struct {
		spec string
		ok   []int
		bad  []int
	}{
		{"2xx", []int{200, 204, 299}, []int{199, 300, 500}},
		{"200,202", []int{200, 202}, []int{201}},
		{"200-204, 3xx", []int{204, 302}, []int{205, 404}},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			f, err := ParseCodes(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range tt.ok {
				if !f(c) {
					t.Errorf("%d not a success", c)
				}
			}
			for _, c := range tt.bad {
				if f(c) {
					t.Errorf("%d a success", c)
				}
			}
		})
	}
}
