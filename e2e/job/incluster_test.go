//go:build e2e

package job

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// jobName is the Job's name in manifests/base.
const jobName = "k8secrets-inject"

// serviceAccount is the Job's ServiceAccount in manifests/base.
const serviceAccount = "k8secrets-job"

// deployJob applies manifests/base with the secret-access component into
// ns, as a user's overlay would: the ConfigMap's parameters merged in, the
// images those of the tests' tag, pulled only if not present.
func (s *suite) deployJob(ctx context.Context, t *testing.T, ns string, params ...string) {
	t.Helper()
	manifests, err := filepath.Abs("../../manifests")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// kustomize refuses absolute paths to other kustomizations.
	rel, err := filepath.Rel(dir, manifests)
	if err != nil {
		t.Fatal(err)
	}
	// The defaults first; params override them.
	var keys []string
	values := map[string]string{}
	for _, p := range append([]string{"K8SECRETS_AGENT_IMAGE=" + s.agentImage(), "K8SECRETS_TIMEOUT=2m"}, params...) {
		k, _, _ := strings.Cut(p, "=")
		if _, ok := values[k]; !ok {
			keys = append(keys, k)
		}
		values[k] = p
	}
	var literals strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&literals, "      - %s\n", values[k])
	}
	overlay := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: %s
resources:
  - %s/base
components:
  - %s/secret-access
configMapGenerator:
  - name: k8secrets-job
    behavior: merge
    literals:
%simages:
  - name: ghcr.io/k8secrets/k8secrets-job
    newName: k8secrets-job
    newTag: %q
`, ns, rel, rel, literals.String(), s.tag)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		t.Fatal(err)
	}
	rendered, err := exec.CommandContext(ctx, s.kubectl, "kustomize", dir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize of the overlay:\n%s\n%v: %s", overlay, err, stderrOf(err))
	}
	for _, want := range []string{"image: k8secrets-job:" + s.tag, "imagePullPolicy: IfNotPresent", "serviceAccountName: " + serviceAccount} {
		if !bytes.Contains(rendered, []byte(want)) {
			t.Fatalf("the rendered manifests lack %q:\n%s", want, rendered)
		}
	}
	apply := exec.CommandContext(ctx, s.kubectl, "--kubeconfig", s.Kubeconfig, "apply", "-f", "-")
	apply.Stdin = bytes.NewReader(rendered)
	if out, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply the Job's manifests: %v\n%s", err, out)
	}
}

func stderrOf(err error) string {
	if x, ok := err.(*exec.ExitError); ok {
		return string(x.Stderr)
	}
	return ""
}

// jobOutcome waits for the Job to finish and returns its final condition
// (Complete or Failed, with its reason) and the exit codes of its pods' job
// container, in order of creation.
func (s *suite) jobOutcome(ctx context.Context, t *testing.T, ns string) (batchv1.JobCondition, []int32) {
	t.Helper()
	var job *batchv1.Job
	var cond batchv1.JobCondition
	err := wait.PollUntilContextTimeout(ctx, time.Second, 4*time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		if job, err = s.Client.BatchV1().Jobs(ns).Get(ctx, jobName, metav1.GetOptions{}); err != nil {
			return false, nil
		}
		for _, c := range job.Status.Conditions {
			if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
				cond = c
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("job %s/%s did not finish: %v\n%s", ns, jobName, err, s.podStates(ns, "batch.kubernetes.io/job-name="+jobName))
	}
	var codes []int32
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		pods, err := s.Pods(ctx, ns, "batch.kubernetes.io/job-name="+jobName)
		if err != nil {
			return false, nil
		}
		codes = nil
		for _, p := range sortByCreation(pods) {
			for _, cs := range p.Status.ContainerStatuses {
				if cs.Name != "job" {
					continue
				}
				if cs.State.Terminated == nil {
					return false, nil
				}
				codes = append(codes, cs.State.Terminated.ExitCode)
			}
		}
		return len(codes) > 0, nil
	})
	if err != nil {
		t.Fatalf("the pods of job %s/%s did not terminate: %v", ns, jobName, err)
	}
	return cond, codes
}

func sortByCreation(pods []corev1.Pod) []corev1.Pod {
	out := append([]corev1.Pod(nil), pods...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].CreationTimestamp.Before(&out[j-1].CreationTimestamp); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// jobLogs returns the job container's logs of the Job's pods, for failure
// messages: the Job never logs Secret values.
func (s *suite) jobLogs(ctx context.Context, ns string) string {
	pods, err := s.Pods(ctx, ns, "batch.kubernetes.io/job-name="+jobName)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods {
		raw, err := s.Client.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: "job"}).DoRaw(ctx)
		fmt.Fprintf(&b, "--- %s (%v)\n%s\n", p.Name, err, raw)
	}
	return b.String()
}

// The shipped Job, under its shipped ServiceAccount and Role, injects the
// Secret into a Deployment: the Job completes with exit code 0 and every
// pod reads the Secret at the default path.
func TestInClusterInject(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 6*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.deployment(ctx, t, ns, "web", "web", 2)
	// An OnDelete DaemonSet too: the Job rolls its pods itself, through
	// evictions, under the shipped Role.
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		Spec: appsv1.DaemonSetSpec{Selector: selector("node-agent"), Template: podTemplate("node-agent"),
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}}}
	if _, err := s.Client.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nodes := int(s.waitDaemonSet(ctx, t, ns, "agent").Status.DesiredNumberScheduled)
	before := map[string]bool{}
	for _, p := range s.livePods(ctx, t, ns, "app=node-agent") {
		before[string(p.UID)] = true
	}

	s.deployJob(ctx, t, ns, "K8SECRETS_SELECTOR=app in (web,node-agent)", "K8SECRETS_SECRET=db-creds")
	cond, codes := s.jobOutcome(ctx, t, ns)
	if cond.Type != batchv1.JobComplete || codes[len(codes)-1] != 0 {
		t.Fatalf("job: condition %s (%s: %s), exit codes %v; want Complete after exit 0\n%s", cond.Type, cond.Reason, cond.Message, codes, s.jobLogs(ctx, ns))
	}
	for _, c := range codes[:len(codes)-1] {
		// A retry is allowed after an API error only (exit 1): the first call
		// of a fresh pod may fail on this cluster (offline-cluster.md).
		if c != 1 {
			t.Errorf("job pods' exit codes %v; only exit 1 may be retried", codes)
		}
	}
	s.webInjected(ctx, t, ns, value)
	pods := s.livePods(ctx, t, ns, "app=node-agent")
	if len(pods) != nodes {
		t.Fatalf("%d DaemonSet pods after the Job; want %d\n%s", len(pods), nodes, s.podStates(ns, "app=node-agent"))
	}
	for i := range pods {
		p := &pods[i]
		if before[string(p.UID)] || !podReady(p) || !mountsSecret(p, "db-creds") {
			t.Errorf("DaemonSet pod %s: replaced %v, ready %v, mounts the secret %v; want all three", p.Name, !before[string(p.UID)], podReady(p), mountsSecret(p, "db-creds"))
		}
	}
	s.checkSecretFile(ctx, t, pods, "db-creds", value)
	if logs := s.jobLogs(ctx, ns); strings.Contains(logs, string(value)) {
		t.Errorf("the Job's logs hold the Secret's value (withheld)")
	}
}

// The shipped Job on bad input (exit 2) or a Secret that does not exist
// (exit 3): its container exits with that code, the podFailurePolicy fails
// the Job at once (no retry of a verdict), and nothing changed.
func TestInClusterRefusals(t *testing.T) {
	s := setup(t)
	t.Parallel()
	for _, tc := range []struct {
		name             string
		selector, secret string
		want             int32
		logs             string // what the Job's log must name
	}{
		{name: "invalid selector", selector: "app in (web", secret: "db-creds", want: 2, logs: "selector"},
		{name: "secret not found", selector: "app=web", secret: "missing", want: 3, logs: "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, 6*time.Minute)
			ns := s.Namespace(t)
			value := s.createSecret(ctx, t, ns, "db-creds")
			s.deployment(ctx, t, ns, "web", "web", 1)
			before := withoutJobPods(s.stableVersions(ctx, t, ns))

			s.deployJob(ctx, t, ns, "K8SECRETS_SELECTOR="+tc.selector, "K8SECRETS_SECRET="+tc.secret)
			cond, codes := s.jobOutcome(ctx, t, ns)
			logs := s.jobLogs(ctx, ns)
			if strings.Contains(logs, string(value)) {
				t.Fatalf("the Job's logs hold the Secret's value (withheld)")
			}
			if cond.Type != batchv1.JobFailed || cond.Reason != batchv1.JobReasonPodFailurePolicy || codes[len(codes)-1] != tc.want {
				t.Fatalf("job: condition %s (%s: %s), exit codes %v; want Failed by PodFailurePolicy after exit %d\n%s", cond.Type, cond.Reason, cond.Message, codes, tc.want, logs)
			}
			for _, c := range codes[:len(codes)-1] {
				if c != 1 {
					t.Errorf("job pods' exit codes %v; only exit 1 may be retried", codes)
				}
			}
			if !strings.Contains(logs, tc.logs) {
				t.Errorf("the Job's log does not name %q:\n%s", tc.logs, logs)
			}
			if after := s.versionsOf(ctx, t, ns); after != before {
				t.Errorf("objects changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// The shipped Job whose rollout fails (the agent's image does not exist):
// it rolls the Deployment back under the shipped Role, its container exits
// 5 and the podFailurePolicy fails the Job; the template is exactly the one
// before and the original pods are still there, Ready.
func TestInClusterFailedRolloutRolledBack(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 6*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	orig := s.deployment(ctx, t, ns, "web", "web", 2)
	before := s.livePods(ctx, t, ns, "app=web")

	s.deployJob(ctx, t, ns, "K8SECRETS_SELECTOR=app=web", "K8SECRETS_SECRET=db-creds",
		"K8SECRETS_AGENT_IMAGE="+missingImage, "K8SECRETS_TIMEOUT=15s")
	cond, codes := s.jobOutcome(ctx, t, ns)
	logs := s.jobLogs(ctx, ns)
	if strings.Contains(logs, string(value)) {
		t.Fatalf("the Job's logs hold the Secret's value (withheld)")
	}
	if cond.Type != batchv1.JobFailed || cond.Reason != batchv1.JobReasonPodFailurePolicy || codes[len(codes)-1] != 5 {
		t.Fatalf("job: condition %s (%s: %s), exit codes %v; want Failed by PodFailurePolicy after exit 5\n%s", cond.Type, cond.Reason, cond.Message, codes, logs)
	}
	s.webRolledBack(ctx, t, ns, orig, before)
}

// versionsOf is versions without the Job's own pods, which come and go.
func (s *suite) versionsOf(ctx context.Context, t *testing.T, ns string) string {
	t.Helper()
	return withoutJobPods(s.versions(ctx, t, ns))
}

func withoutJobPods(versions string) string {
	var keep []string
	for _, f := range strings.Fields(versions) {
		if strings.HasPrefix(f, "pod/"+jobName+"-") {
			continue
		}
		keep = append(keep, f)
	}
	return strings.Join(keep, " ")
}

// asServiceAccount is the admin's config impersonating the Job's
// ServiceAccount in ns, with the groups the API server gives it.
func (s *suite) asServiceAccount(ns string) (user string, groups []string) {
	return "system:serviceaccount:" + ns + ":" + serviceAccount,
		[]string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
}

// The shipped Role is minimal: the Job's ServiceAccount may read the one
// Secret it was given and work in its own namespace only. Checked three
// ways: the API server's own access review, real requests, and the Job's
// binary run as that ServiceAccount against another Secret and another
// namespace.
func TestInClusterRoleIsMinimal(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 6*time.Minute)
	ns := s.Namespace(t)
	other := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	unrelated := s.createSecret(ctx, t, ns, "unrelated")
	otherValue := s.createSecret(ctx, t, other, "db-creds")
	secrets := [][]byte{value, unrelated, otherValue}
	s.deployment(ctx, t, other, "web", "web", 1)
	before := withoutJobPods(s.stableVersions(ctx, t, ns))
	// No pod matches in its own namespace: the Job has nothing to do.
	s.deployJob(ctx, t, ns, "K8SECRETS_SELECTOR=app=web", "K8SECRETS_SECRET=db-creds")

	user, groups := s.asServiceAccount(ns)
	cfg := rest.CopyConfig(s.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	asJob, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// RBAC takes effect asynchronously.
	_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 15*time.Second, true, func(ctx context.Context) (bool, error) {
		ok, err := canI(ctx, asJob, "get", "", "secrets", "db-creds", ns)
		return err == nil && ok, nil
	})
	for _, tc := range []struct {
		verb, group, resource, name, ns string
		allowed                         bool
	}{
		// What it needs, so that a denial below means the Role, not a
		// misconfigured check.
		{"get", "", "secrets", "db-creds", ns, true},
		{"patch", "apps", "deployments", "", ns, true},
		{"create", "", "pods", "", ns, true}, // the pod dry-run
		// Pods are evicted (pods/eviction), never deleted.
		{"delete", "", "pods", "", ns, false},
		// A rollback is a server-side apply: no update, and no get (the
		// informers' copies serve every read).
		{"update", "apps", "deployments", "web", ns, false},
		{"get", "apps", "deployments", "web", ns, false},
		// Other Secrets, in any way.
		{"get", "", "secrets", "unrelated", ns, false},
		{"list", "", "secrets", "", ns, false},
		{"watch", "", "secrets", "", ns, false},
		{"update", "", "secrets", "db-creds", ns, false},
		{"create", "", "secrets", "", ns, false},
		// Another namespace.
		{"get", "", "secrets", "db-creds", other, false},
		{"list", "", "pods", "", other, false},
		{"delete", "", "pods", "", other, false},
		{"create", "", "pods", "", other, false},
		{"patch", "apps", "deployments", "web", other, false},
		{"update", "apps", "deployments", "web", other, false},
		{"patch", "apps", "statefulsets", "", other, false},
		{"patch", "apps", "daemonsets", "", other, false},
		// Nothing cluster-wide.
		{"list", "", "secrets", "", "", false},
		{"patch", "apps", "deployments", "", "", false},
	} {
		ok, err := canI(ctx, asJob, tc.verb, tc.group, tc.resource, tc.name, tc.ns)
		if err != nil {
			t.Fatalf("SelfSubjectAccessReview as %s: %v", user, err)
		}
		if ok != tc.allowed {
			t.Errorf("may %s %s %s/%s %q? %t; want %t", user, tc.verb, tc.group, tc.resource, tc.name+" in "+tc.ns, ok, tc.allowed)
		}
	}

	// Real requests are refused, not only reviews.
	if _, err := asJob.CoreV1().Secrets(ns).Get(ctx, "unrelated", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("get secret %s/unrelated as the Job: %v; want forbidden", ns, err)
	}
	patch := []byte(`{"metadata":{"annotations":{"e2e":"x"}}}`)
	if _, err := asJob.AppsV1().Deployments(other).Patch(ctx, "web", types.MergePatchType, patch, metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("patch deployment %s/web as the Job: %v; want forbidden", other, err)
	}

	// The binary as the ServiceAccount: another Secret, another namespace.
	kubeconfig := s.impersonatingKubeconfig(t, user, groups)
	r := s.job(ctx, t, kubeconfig, ns, secrets, s.injectArgs("app=web", "unrelated", "--timeout", "30s")...)
	if r.code != 3 || !strings.Contains(r.stderr, "forbidden") || !strings.Contains(r.stderr, "grant verb") || !strings.Contains(r.stderr, "get") {
		t.Errorf("inject of a Secret the Role does not name: %s\nwant exit 3, forbidden, naming the verb get", r)
	}
	otherBefore := s.stableVersions(ctx, t, other)
	r = s.job(ctx, t, kubeconfig, other, secrets, s.injectArgs("app=web", "db-creds", "--timeout", "30s")...)
	if r.code == 0 || !strings.Contains(r.stderr, "forbidden") {
		t.Errorf("inject in another namespace as the Job: %s\nwant a failure saying forbidden", r)
	}
	if after := s.versions(ctx, t, other); after != otherBefore {
		t.Errorf("objects in %s changed:\nbefore %s\nafter  %s", other, otherBefore, after)
	}

	// The in-cluster Job itself: no matching pod, exit 0, nothing changed.
	cond, codes := s.jobOutcome(ctx, t, ns)
	if cond.Type != batchv1.JobComplete || codes[len(codes)-1] != 0 {
		t.Errorf("job with no matching pod: condition %s (%s: %s), exit codes %v; want Complete after exit 0\n%s", cond.Type, cond.Reason, cond.Message, codes, s.jobLogs(ctx, ns))
	}
	if after := s.versionsOf(ctx, t, ns); after != before {
		t.Errorf("objects in %s changed:\nbefore %s\nafter  %s", ns, before, after)
	}
}

func canI(ctx context.Context, c kubernetes.Interface, verb, group, resource, name, ns string) (bool, error) {
	r, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: ns, Verb: verb, Group: group, Resource: resource, Name: name}}}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return r.Status.Allowed, nil
}

// impersonatingKubeconfig writes a copy of the admin kubeconfig whose user
// impersonates user and groups (kubectl's --as and --as-group).
func (s *suite) impersonatingKubeconfig(t *testing.T, user string, groups []string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.AuthInfos {
		a.Impersonate = user
		a.ImpersonateGroups = groups
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}
