package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestInvoked(t *testing.T) {
	tests := []struct {
		name     string
		argv     []string
		wantName string
		wantArgs []string
	}{
		{"the Job", []string{"/usr/local/bin/k8secrets-job", "status"}, JobName, []string{"status"}},
		{"any other name is the Job", []string{"./job", "status"}, JobName, []string{"status"}},
		{"the kubectl plugin", []string{"/home/u/.krew/bin/kubectl-k8secrets", "status", "-n", "shop"}, PluginName, []string{"status", "-n", "shop"}},
		{"the plugin on Windows", []string{"kubectl-k8secrets.exe", "status"}, PluginName, []string{"status"}},
		{"kubectl's completion helper", []string{"kubectl_complete-k8secrets", "inject", "--reload", ""}, PluginName, []string{"__complete", "inject", "--reload", ""}},
		{"no argv", nil, JobName, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, args := Invoked(tt.argv)
			if name != tt.wantName || !slices.Equal(args, tt.wantArgs) {
				t.Errorf("Invoked(%q) = %q, %q; want %q, %q", tt.argv, name, args, tt.wantName, tt.wantArgs)
			}
		})
	}
}

// TestPluginHelpNamesKubectl: run as kubectl-k8secrets, help, usage,
// examples and errors say "kubectl k8secrets", as the user typed it.
func TestPluginHelpNamesKubectl(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"status", "--help"}, {"inject", "--help"}, {"refresh", "-h"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var out strings.Builder
			_, err := ParseAs(PluginName, args, envOf(nil), &out)
			if !errors.Is(err, ErrHelp) {
				t.Fatalf("ParseAs(%q) error = %v; want ErrHelp", args, err)
			}
			help := out.String()
			if !strings.Contains(help, "Usage:\n  kubectl k8secrets ") {
				t.Errorf("help of %q has no usage line naming kubectl k8secrets:\n%s", args, help)
			}
			if strings.Contains(help, JobName) {
				t.Errorf("help of %q names %s; want kubectl k8secrets only:\n%s", args, JobName, help)
			}
			if args[0] != "--help" && !strings.Contains(help, "Examples:\n  # ") {
				t.Errorf("help of %q has no examples:\n%s", args, help)
			}
		})
	}
	var out strings.Builder
	if _, err := ParseAs(JobName, []string{"status", "--help"}, envOf(nil), &out); !errors.Is(err, ErrHelp) {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "  k8secrets-job status -n shop\n") || strings.Contains(out.String(), "kubectl k8secrets") {
		t.Errorf("help of k8secrets-job status: want its examples to name k8secrets-job:\n%s", out.String())
	}
	_, err := ParseAs(PluginName, []string{"status", "--bogus"}, envOf(nil), &out)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "see kubectl k8secrets --help") {
		t.Errorf("ParseAs(status --bogus) = %v; want ErrInvalid advising kubectl k8secrets --help", err)
	}
}

// TestEveryCommandHasExamples: each command's --help shows examples.
func TestEveryCommandHasExamples(t *testing.T) {
	for _, cmd := range []string{Inject, Remove, Status, Refresh, Version, Completion} {
		var out strings.Builder
		if _, err := ParseAs(JobName, []string{cmd, "--help"}, envOf(nil), &out); !errors.Is(err, ErrHelp) {
			t.Fatalf("%s --help: %v", cmd, err)
		}
		if !strings.Contains(out.String(), "Examples:\n  ") || !strings.Contains(out.String(), "k8secrets-job "+cmd) {
			t.Errorf("%s --help has no example of k8secrets-job %s:\n%s", cmd, cmd, out.String())
		}
	}
}

// TestKubectlGlobalFlags: the flags kubectl users pass to any kubectl
// command, before or after the plugin's command, as kubectl passes them on
// untouched.
func TestKubectlGlobalFlags(t *testing.T) {
	for _, args := range [][]string{
		{"status", "-n", "shop", "--kubeconfig", "/k.yaml", "--context", "prod", "--cluster", "c1", "--user", "u1"},
		{"-n", "shop", "--kubeconfig=/k.yaml", "--context=prod", "status", "--cluster=c1", "--user=u1"},
		{"--namespace", "shop", "--kubeconfig", "/k.yaml", "--context", "prod", "--cluster", "c1", "--user", "u1", "status"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cfg, err := ParseAs(PluginName, args, envOf(nil), &strings.Builder{})
			if err != nil {
				t.Fatalf("ParseAs(%q) = %v", args, err)
			}
			if cfg.Command != Status || cfg.Namespace != "shop" || cfg.Kubeconfig != "/k.yaml" || cfg.Context != "prod" || cfg.Cluster != "c1" || cfg.User != "u1" {
				t.Errorf("ParseAs(%q) = %+v; want status in shop, /k.yaml, context prod, cluster c1, user u1", args, cfg)
			}
		})
	}
	cfg, err := Parse([]string{"status"}, envOf(map[string]string{"K8SECRETS_CLUSTER": "c2", "K8SECRETS_USER": "u2"}), &strings.Builder{})
	if err != nil || cfg.Cluster != "c2" || cfg.User != "u2" {
		t.Errorf("Parse(status) with K8SECRETS_CLUSTER, K8SECRETS_USER = %+v, %v; want cluster c2, user u2", cfg, err)
	}
}

// TestCompletion: the scripts of each shell, and the answers of the
// hidden __complete command the scripts and kubectl call: exit 0 (ErrHelp),
// the commands, the fixed values of --reload.
func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{
		"bash":       "__start_k8secrets-job",
		"zsh":        "#compdef k8secrets-job",
		"fish":       "complete -c k8secrets-job",
		"powershell": "Register-ArgumentCompleter",
	} {
		var out strings.Builder
		_, err := ParseAs(JobName, []string{"completion", shell}, envOf(nil), &out)
		if !errors.Is(err, ErrHelp) {
			t.Errorf("completion %s: error %v; want ErrHelp (exit 0)", shell, err)
		}
		if !strings.Contains(out.String(), want) {
			t.Errorf("completion %s: script has no %q", shell, want)
		}
	}
	var out strings.Builder
	if _, err := ParseAs(PluginName, []string{"completion", "bash"}, envOf(nil), &out); err != nil && !errors.Is(err, ErrHelp) || !strings.Contains(out.String(), "__start_kubectl-k8secrets") {
		t.Errorf("kubectl-k8secrets completion bash: %v; want a script for the kubectl-k8secrets binary", err)
	}
	if _, err := Parse([]string{"completion", "tcsh"}, envOf(nil), &out); !errors.Is(err, ErrInvalid) {
		t.Errorf("completion tcsh: %v; want ErrInvalid", err)
	}

	tests := []struct {
		name string
		argv []string
		want []string
	}{
		{"commands", []string{PluginCompletionName, ""}, []string{"completion", "inject", "refresh", "remove", "status", "version"}},
		{"commands by prefix", []string{PluginCompletionName, "re"}, []string{"refresh", "remove"}},
		{"reload modes", []string{PluginCompletionName, "inject", "--reload", ""}, []string{"restart", "restart-all", "signal:SIGHUP", "http:"}},
		{"log formats", []string{JobName, "__complete", "status", "--log-format", "j"}, []string{"json"}},
		{"flags", []string{PluginCompletionName, "status", "--name"}, []string{"--namespace"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, args := Invoked(tt.argv)
			var out strings.Builder
			_, err := ParseAs(name, args, envOf(nil), &out)
			if !errors.Is(err, ErrHelp) {
				t.Fatalf("%q: error %v; want ErrHelp (exit 0: kubectl drops the completions of a failed helper)", tt.argv, err)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if last := lines[len(lines)-1]; !strings.HasPrefix(last, ":") {
				t.Errorf("%q: last line %q; want cobra's :directive, which kubectl reads from the last line", tt.argv, last)
			}
			var got []string
			for _, l := range lines {
				if w, _, _ := strings.Cut(l, "\t"); w != "" && !strings.HasPrefix(w, ":") {
					got = append(got, w)
				}
			}
			for _, w := range tt.want {
				if !slices.Contains(got, w) {
					t.Errorf("%q completes %q; want %q among them", tt.argv, got, w)
				}
			}
			if tt.name == "commands by prefix" && len(got) != 2 {
				t.Errorf("%q completes %q; want refresh and remove only", tt.argv, got)
			}
		})
	}
}
