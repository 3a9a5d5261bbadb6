//go:build e2e

package job

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

// crashAgentImage is e2e/crashagent: an "agent" that passes its probes and
// exits 1 eight seconds after it started.
const crashAgentImage = "k8secrets-e2e-crashagent:dev"

var (
	crashOnce sync.Once
	crashErr  error
)

func (s *suite) crashAgent(ctx context.Context, t *testing.T) string {
	t.Helper()
	crashOnce.Do(func() {
		if crashErr = framework.BuildGoImage(ctx, crashAgentImage, "./crashagent"); crashErr == nil {
			crashErr = s.LoadImages(ctx, crashAgentImage)
		}
	})
	if crashErr != nil {
		t.Fatal(crashErr)
	}
	return crashAgentImage
}

// An agent that starts, is Ready, and crashes eight seconds later: the
// rollout is complete by the Deployment's status before the crash, but the
// Job holds it for --healthy-for, sees the restart, fails and rolls back
// (exit 5), and the pods end Ready on the previous template. Without the
// hold, the Job would report success over a crash-looping agent.
func TestHealthAgentCrashAfterReadyRollsBack(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	image := s.crashAgent(ctx, t)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	orig := s.deployment(ctx, t, ns, "web", "web", 1)
	rec := s.recordPods(ctx, t, ns, "app=web")

	r := s.job(ctx, t, "", ns, [][]byte{value}, "inject", "-l", "app=web", "--secret", "db-creds",
		"--agent-image", image, "--timeout", "60s", "--healthy-for", "20s")
	if r.code != 5 || !strings.Contains(r.stderr+r.stdout, "(--healthy-for)") {
		t.Fatalf("inject with an agent that crashes after Ready: %s\nwant exit 5 naming the crash within --healthy-for", r)
	}
	d, err := s.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Spec.Template.Annotations["k8secrets.io/hash-db-creds"] != "" || len(d.Spec.Template.Spec.InitContainers) != 0 {
		t.Errorf("after the rollback deployment/web still carries the injection: %+v", d.Spec.Template)
	}
	if d.Spec.Template.Spec.Containers[0].Image != orig.Spec.Template.Spec.Containers[0].Image {
		t.Errorf("after the rollback the app's image changed")
	}
	if err := s.WaitDeploymentAvailable(ctx, ns, "web", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	s.settledPods(ctx, t, ns, "app=web", 1, "db-creds", false)
	rec.mu.Lock()
	readyInjected := 0
	for uid := range rec.injected {
		if rec.ready[uid] {
			readyInjected++
		}
	}
	rec.mu.Unlock()
	if readyInjected == 0 {
		t.Errorf("no pod of the injected revision was ever Ready: the test did not exercise a crash after Ready")
	}
}

// A DaemonSet with updateStrategy OnDelete: its controller never replaces
// pods by itself, so the Job evicts each and waits for the replacement.
// "Injected" means every pod carries the Secret, not "the controller
// observed the template".
func TestHealthOnDeleteDaemonSetRolled(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		Spec: appsv1.DaemonSetSpec{Selector: selector("node-agent"), Template: podTemplate("node-agent"),
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}}}
	if _, err := s.Client.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	orig := s.waitDaemonSet(ctx, t, ns, "agent")
	nodes := int(orig.Status.DesiredNumberScheduled)
	before := map[string]bool{}
	for _, p := range s.livePods(ctx, t, ns, "app=node-agent") {
		before[string(p.UID)] = true
	}

	r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=node-agent", "db-creds", "--timeout", "2m")...)
	if r.code != 0 {
		t.Fatalf("inject into an OnDelete DaemonSet: %s\nwant exit 0", r)
	}
	// Right after exit 0: every pod is a new one, Ready, with the Secret.
	pods := s.livePods(ctx, t, ns, "app=node-agent")
	if len(pods) != nodes {
		t.Fatalf("%d pods after the rollout; want %d\n%s", len(pods), nodes, s.podStates(ns, "app=node-agent"))
	}
	for i := range pods {
		p := &pods[i]
		if before[string(p.UID)] || !podReady(p) || !mountsSecret(p, "db-creds") {
			t.Errorf("pod %s: replaced %v, ready %v, mounts the secret %v; want all three", p.Name, !before[string(p.UID)], podReady(p), mountsSecret(p, "db-creds"))
		}
	}
	s.checkSecretFile(ctx, t, pods, "db-creds", value)
}

// In a namespace that enforces Pod Security "restricted", a compliant app
// is injected: the agent complies (non-root, no capabilities, RuntimeDefault
// seccomp, no privilege escalation), the kubelet runs the new pods, and the
// app reads the Secret.
func TestHealthRestrictedNamespaceInjects(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	n, err := s.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Labels["pod-security.kubernetes.io/enforce"] = "restricted"
	n.Labels["pod-security.kubernetes.io/enforce-version"] = "latest"
	if _, err := s.Client.CoreV1().Namespaces().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.deployment(ctx, t, ns, "web", "web", 2, func(d *appsv1.Deployment) {
		d.Spec.Template.Spec.SecurityContext = &corev1.PodSecurityContext{
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	})
	r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=web", "db-creds")...)
	if r.code != 0 {
		t.Fatalf("inject under enforce=restricted: %s\nwant exit 0", r)
	}
	s.webInjected(ctx, t, ns, value)
}

// notBestEffortQuota allows no pod that requests resources: the app's pods
// (no requests) are BestEffort and unaffected; a pod with the injected
// agent (it requests CPU and memory) is refused.
func (s *suite) notBestEffortQuota(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	q := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "no-burstable"},
		Spec: corev1.ResourceQuotaSpec{
			Hard:   corev1.ResourceList{corev1.ResourcePods: resource.MustParse("0")},
			Scopes: []corev1.ResourceQuotaScope{corev1.ResourceQuotaScopeNotBestEffort},
		}}
	if _, err := s.Client.CoreV1().ResourceQuotas(ns).Create(ctx, q, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create quota: %v", err)
	}
}

// A ResourceQuota that refuses the new pods: refused by the pod dry-run
// before any write (exit 4), no object's resourceVersion moved.
func TestHealthQuotaRefusedByPodDryRun(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.deployment(ctx, t, ns, "web", "web", 2)
	s.notBestEffortQuota(ctx, t, ns)
	s.refusedBeforeAnyWrite(ctx, t, ns, value, "web", "quota")
}

// The same quota, created the moment the Job logs "applying" (after its
// dry-runs passed): the new ReplicaSet cannot create its pods, the
// Deployment says so in ReplicaFailure, and the Job fails and rolls back
// within 15 s of the apply (--timeout is 2m), quoting the quota; the pods
// end Ready on the previous template.
func TestHealthQuotaAfterDryRunFailsFast(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	orig := s.deployment(ctx, t, ns, "web", "web", 2)
	before := s.livePods(ctx, t, ns, "app=web")

	args := append([]string{"inject", "--kubeconfig", s.Kubeconfig, "-n", ns}, s.injectArgs("app=web", "db-creds", "--timeout", "2m")[1:]...)
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var applied time.Time
	var logs strings.Builder
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		line := sc.Text()
		logs.WriteString(line + "\n")
		if applied.IsZero() && strings.Contains(line, "msg=applying") {
			s.notBestEffortQuota(ctx, t, ns)
			applied = time.Now()
		}
	}
	err = cmd.Wait()
	took := time.Since(applied)
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	}
	out := stdout.String() + logs.String()
	if bytes.Contains([]byte(out), value) {
		t.Fatal("k8secrets-job printed the Secret's value (output withheld)")
	}
	if applied.IsZero() || code != 5 || !strings.Contains(out, "ReplicaFailure") || !strings.Contains(out, "quota") {
		t.Fatalf("inject with a quota arriving at the apply: exit %d\n%s\nwant exit 5 quoting the ReplicaFailure condition and the quota", code, out)
	}
	t.Logf("failed and rolled back %.1f s after the apply (--timeout 2m)", took.Seconds())
	if took > 15*time.Second {
		t.Errorf("failed and rolled back %s after the apply; want within 15 s", took)
	}
	// The quota may have come just after the first new pod: then an old
	// pod was replaced, so check the template and the pods, not their UIDs.
	d, err := s.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(d.Spec.Template, orig.Spec.Template) {
		t.Errorf("after the rollback deployment/web's template is\n%+v\nwant the one before\n%+v", d.Spec.Template, orig.Spec.Template)
	}
	if err := s.WaitDeploymentAvailable(ctx, ns, "web", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	after := s.settledPods(ctx, t, ns, "app=web", 2, "db-creds", false)
	t.Logf("pods before %s; after %s", restartCounts(before), restartCounts(after))
}
