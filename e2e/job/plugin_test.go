//go:build e2e

package job

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

// pluginPath is a PATH holding only the kubectl plugin (bin/kubectl-k8secrets,
// which `make build` links to the Job's binary) and, with completion, its
// completion helper (bin/kubectl_complete-k8secrets), as a user installs
// them.
func (s *suite) pluginPath(t *testing.T, completion bool) string {
	t.Helper()
	dir := t.TempDir()
	names := []string{"kubectl-k8secrets"}
	if completion {
		names = append(names, "kubectl_complete-k8secrets")
	}
	for _, n := range names {
		src := filepath.Join(os.Getenv("E2E_BIN"), n)
		if _, err := os.Stat(src); err != nil {
			t.Fatalf("%v; run `make build`, which links it to k8secrets-job", err)
		}
		if err := os.Symlink(src, filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// kubectlPlugin runs the real kubectl, as a user of the plugin does: the
// cluster from KUBECONFIG (no --kubeconfig flag), PATH holding the plugin.
func (s *suite) kubectlPlugin(ctx context.Context, t *testing.T, path string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, s.kubectl, args...)
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + path, "KUBECONFIG=" + s.Kubeconfig}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("kubectl %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	return stdout.String(), err
}

// TestKubectlPluginStatus: with bin/kubectl-k8secrets on the PATH, the real
// kubectl lists it as a plugin and runs `kubectl k8secrets status -n NS`,
// which reads the cluster from KUBECONFIG as kubectl does and names the
// workload injected in NS (and not in another namespace); kubectl's global
// flags (--kubeconfig, --context) after the plugin's command work too, and
// kubectl completes the plugin's words through kubectl_complete-k8secrets.
func TestKubectlPluginStatus(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	ns := s.Namespace(t)
	other := s.Namespace(t)
	const app = "plugin-shop-web"
	v := s.createSecret(ctx, t, ns, "plugin-creds")
	s.deployment(ctx, t, ns, app, app, 1)
	if r := s.job(ctx, t, "", ns, [][]byte{v}, s.injectArgs("app="+app, "plugin-creds")...); r.code != 0 {
		t.Fatalf("inject: %s", r)
	}

	path := s.pluginPath(t, true)
	out, err := s.kubectlPlugin(ctx, t, path, "plugin", "list")
	if err != nil || !strings.Contains(out, filepath.Join(path, "kubectl-k8secrets")) {
		t.Errorf("kubectl plugin list: %v; want it to list %s", err, filepath.Join(path, "kubectl-k8secrets"))
	}

	out, err = s.kubectlPlugin(ctx, t, path, "k8secrets", "status", "-n", ns)
	if err != nil {
		t.Fatalf("kubectl k8secrets status -n %s: %v", ns, err)
	}
	if !strings.Contains(out, app) || !strings.Contains(out, "plugin-creds") {
		t.Errorf("kubectl k8secrets status -n %s does not name the injected Deployment %s and its Secret plugin-creds", ns, app)
	}
	out, err = s.kubectlPlugin(ctx, t, path, "k8secrets", "status", "--namespace", other)
	if err != nil || strings.Contains(out, app) {
		t.Errorf("kubectl k8secrets status --namespace %s: %v; want exit 0 and no %s (injected in %s only)", other, err, app, ns)
	}

	// kubectl passes its global flags to a plugin untouched: the plugin
	// parses them, here with a kubeconfig that is not KUBECONFIG's.
	kc, err := clientcmd.LoadFromFile(s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, s.kubectl, "k8secrets", "status", "-n", ns, "--kubeconfig", s.Kubeconfig, "--context", kc.CurrentContext)
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + path, "KUBECONFIG=" + filepath.Join(t.TempDir(), "none")}
	b, err := cmd.Output()
	if err != nil || !strings.Contains(string(b), app) {
		t.Errorf("kubectl k8secrets status -n %s --kubeconfig F --context %s: %v; want the Deployment %s named", ns, kc.CurrentContext, err, app)
	}
	cmd = exec.CommandContext(ctx, s.kubectl, "k8secrets", "status", "-n", ns, "--context", "no-such-context")
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + path, "KUBECONFIG=" + s.Kubeconfig}
	var exit *exec.ExitError
	if _, err := cmd.Output(); !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Errorf("kubectl k8secrets status --context no-such-context: %v; want a failure (the flag is the plugin's to honour)", err)
	}

	// Completion through kubectl: it runs kubectl_complete-k8secrets when it
	// is on the PATH, and completes nothing of the plugin without it.
	complete := func(path string, words ...string) string {
		out, err := s.kubectlPlugin(ctx, t, path, append([]string{"__complete", "k8secrets"}, words...)...)
		if err != nil {
			t.Fatalf("kubectl __complete k8secrets %q: %v", words, err)
		}
		return out
	}
	if out := complete(path, ""); !strings.Contains(out, "inject\t") || !strings.Contains(out, "status\t") {
		t.Errorf("kubectl __complete k8secrets '': %q; want the plugin's commands", out)
	}
	if out := complete(path, "inject", "--reload", ""); !strings.Contains(out, "restart-all") {
		t.Errorf("kubectl __complete k8secrets inject --reload '': %q; want the reload modes", out)
	}
	if out := complete(s.pluginPath(t, false), ""); strings.Contains(out, "inject") {
		t.Errorf("kubectl __complete k8secrets '' without kubectl_complete-k8secrets: %q; want no command of the plugin (so the check above is kubectl calling the helper)", out)
	}
}
