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

// Values from the environment and the config file go through the flags' own
// parsers: what the command line refuses, they refuse too, naming the
// variable or key and the form expected; never a silent default.
func TestEnvAndFileValuesParsedAsFlags(t *testing.T) {
	base := []string{"inject", "-l", "app=web", "--secret", "s"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		file string // YAML, if not empty
		want []string
	}{
		{"env bool yes", map[string]string{"K8SECRETS_DRY_RUN": "yes"}, "", []string{`K8SECRETS_DRY_RUN="yes"`, "--dry-run", "true or false"}},
		{"env bool empty", map[string]string{"K8SECRETS_DRY_RUN": ""}, "", []string{"K8SECRETS_DRY_RUN", "true or false"}},
		{"env agent on", map[string]string{"K8SECRETS_AGENT": "on"}, "", []string{"K8SECRETS_AGENT", "true or false"}},
		{"env duration without unit", map[string]string{"K8SECRETS_TIMEOUT": "300"}, "", []string{`K8SECRETS_TIMEOUT="300"`, "--timeout", "a duration with a unit"}},
		{"env duration garbage", map[string]string{"K8SECRETS_TIMEOUT": "five minutes"}, "", []string{"K8SECRETS_TIMEOUT", "a duration"}},
		{"env int", map[string]string{"K8SECRETS_MAX_PARALLEL": "4.5"}, "", []string{"K8SECRETS_MAX_PARALLEL", "a whole number"}},
		{"env reserved mount path", map[string]string{"K8SECRETS_MOUNT_PATH": "/var/run/secrets/kubernetes.io/serviceaccount/"}, "", []string{"--mount-path", "sits inside /var/run/secrets/kubernetes.io"}},
		{"env bad reload", map[string]string{"K8SECRETS_RELOAD": "signal:SIGHUPP"}, "", []string{"SIGHUPP"}},
		{"file bool yes", nil, "dry-run: yes\n", []string{`key "dry-run"`, `"yes"`, "true or false"}},
		{"file bool yes (underscore key)", nil, "dry_run: yes\n", []string{`key "dry_run"`, "true or false"}},
		{"file duration without unit", nil, "timeout: 300\n", []string{`key "timeout"`, `"300"`, "a duration with a unit"}},
		{"file int as text", nil, "max-parallel: four\n", []string{`key "max-parallel"`, "a whole number"}},
		{"file list for a string", nil, "secret: [a, b]\n", []string{`key "secret"`, "a list where one value is expected"}},
		{"file map", nil, "timeout:\n  seconds: 3\n", []string{`unknown key "timeout.seconds"`}},
		{"file reserved mount path", nil, "mount-path: /proc/x\n", []string{"sits inside /proc"}},
		{"env and file both bad: all reported", map[string]string{"K8SECRETS_TIMEOUT": "300"}, "dry-run: yes\n", []string{"K8SECRETS_TIMEOUT", `key "dry-run"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := base
			if tc.file != "" {
				file := filepath.Join(t.TempDir(), "c.yaml")
				if err := os.WriteFile(file, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(append([]string{}, base...), "--config", file)
			}
			cfg, err := Parse(args, envOf(tc.env), io.Discard)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(env %v, file %q) = %+v, %v; want ErrInvalid", tc.env, tc.file, cfg, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Parse(env %v, file %q) = %q; want it to mention %q", tc.env, tc.file, err, w)
				}
			}
		})
	}
}

// The same value on the command line is refused the same way: the env and
// file checks above are the flags' own.
func TestFlagValuesRefusedAlike(t *testing.T) {
	for _, args := range [][]string{
		{"inject", "-l", "a=b", "--secret", "s", "--dry-run=yes"},
		{"inject", "-l", "a=b", "--secret", "s", "--timeout", "300"},
	} {
		if _, err := Parse(args, envOf(nil), io.Discard); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v; want ErrInvalid", args, err)
		}
	}
}

// Good values from each source still work, with the usual precedence, and
// the config file may come from the environment.
func TestEnvAndFileGoodValues(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(file, []byte(`{"dry-run": true, "timeout": "90s", "container": ["a", "b"], "max-parallel": 3, "selector": "app=file"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]string{"inject", "--secret", "s"}, envOf(map[string]string{
		"K8SECRETS_CONFIG": file, "K8SECRETS_TIMEOUT": "2m", "K8SECRETS_MOUNT_PATH": "/etc/creds///",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.DryRun || cfg.Timeout != 2*time.Minute || strings.Join(cfg.Containers, ",") != "a,b" || cfg.MaxParallel != 3 || cfg.Selector != "app=file" {
		t.Errorf("Parse = %+v; want dry-run, 2m from env, containers a,b, max-parallel 3 and selector from the file", cfg)
	}
	if cfg.MountPath != "/etc/creds" {
		t.Errorf("MountPath = %q; want it cleaned to /etc/creds", cfg.MountPath)
	}
	// A list from the environment replaces the file's, it does not add to it.
	cfg, err = Parse([]string{"inject", "--secret", "s", "--config", file}, envOf(map[string]string{"K8SECRETS_CONTAINER": "c"}), io.Discard)
	if err != nil || strings.Join(cfg.Containers, ",") != "c" {
		t.Errorf("Parse(env container c over file a,b) = %v, %v; want [c]", cfg.Containers, err)
	}
}

func TestMountPathReserved(t *testing.T) {
	for _, tc := range []struct {
		path string
		want string // empty: accepted
	}{
		{"/var/run/secrets/kubernetes.io/serviceaccount", "sits inside /var/run/secrets/kubernetes.io"},
		{"/var/run/secrets/kubernetes.io", "is /var/run/secrets/kubernetes.io"},
		{"/var/run/secrets/kubernetes.io/", "is /var/run/secrets/kubernetes.io"},
		{"/var/run/secrets/kubernetes.io//serviceaccount/", "sits inside"},
		{"/run/secrets/kubernetes.io/serviceaccount", "sits inside /run/secrets/kubernetes.io"},
		{"/var/run/secrets", "would hide /var/run/secrets/kubernetes.io"},
		{"/var/run/secrets/", "would hide"},
		{"/var", "would hide"},
		{"/", "is /"},
		{"//", "is /"},
		{"/proc", "is /proc"},
		{"/proc/1", "sits inside /proc"},
		{"/sys/fs", "sits inside /sys"},
		{"/dev/shm/x", "sits inside /dev"},
		{"/var/run/secrets/k8secrets/db", ""},
		{"/etc/creds", ""},
		{"/processes", ""},
		{"/devices/x", ""},
		{"/var/run/secrets/kubernetes.iox", ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			_, err := Parse([]string{"inject", "-l", "a=b", "--secret", "s", "--mount-path", tc.path}, envOf(nil), io.Discard)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Parse(--mount-path %s) = %v; want accepted", tc.path, err)
			case tc.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Parse(--mount-path %s) = %v; want ErrInvalid saying %q", tc.path, err, tc.want)
			}
		})
	}
}
