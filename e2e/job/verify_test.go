//go:build e2e

package job

// Per-pod verification on kind (issue 11): each agent serves GET /status
// (STATUS-CONTRACT.md); status shows, per injected workload, which pods run
// the Secret's current content; refresh waits for them. Every verdict is
// checked against the pods themselves: the demo app serves the version it
// loaded.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

// verifyAgentImage is the agent of these tests: one that serves /status.
// E2E_VERIFY_AGENT_IMAGE names another (loaded) image, for a run before the
// agent of this tree serves it.
func (s *suite) verifyAgentImage() string {
	if img := os.Getenv("E2E_VERIFY_AGENT_IMAGE"); img != "" {
		return img
	}
	return s.agentImage()
}

func (s *suite) demoImage() string { return "k8secrets-demo:" + s.tag }

// verifySetup loads the demo app's image (make images builds it).
func (s *suite) verifySetup(ctx context.Context, t *testing.T) {
	t.Helper()
	if err := s.LoadImages(ctx, s.demoImage(), s.verifyAgentImage()); err != nil && !errors.Is(err, framework.ErrNotKind) {
		t.Fatalf("%v; build it with `make images VERSION=%s`", err, s.tag)
	}
}

// verifySecret creates Secret name with a version (shown by the demo app)
// and a random password, and returns the password.
func (s *suite) verifySecret(ctx context.Context, t *testing.T, ns, name, version string) []byte {
	t.Helper()
	pw := secretValue()
	_, err := s.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name},
		Data: map[string][]byte{"version": []byte(version), "password": pw}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.GuardSecrets(t, ns, pw)
	return pw
}

// updateVerifySecret sets the Secret's version and a new password, and
// returns the password.
func (s *suite) updateVerifySecret(ctx context.Context, t *testing.T, ns, name, version string) []byte {
	t.Helper()
	sec, err := s.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pw := secretValue()
	sec.Data = map[string][]byte{"version": []byte(version), "password": pw}
	if _, err := s.Client.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.GuardSecrets(t, ns, pw)
	return pw
}

// demoApp makes the Deployment run the demo app (it loads the Secret at
// start, on SIGHUP and on POST /-/reload, and serves the version it loaded)
// reading secret at the Job's default mount path.
func (s *suite) demoApp(secret string) func(*appsv1.Deployment) {
	return func(d *appsv1.Deployment) {
		c := &d.Spec.Template.Spec.Containers[0]
		c.Image, c.Args = s.demoImage(), []string{"--secret-dir=" + mountDir + "/" + secret}
		c.ReadinessProbe = &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
			HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}}
	}
}

// withOldInjection gives the Deployment, by hand, what an injection of
// secret by a k8secrets-job older than content keys wrote: the marks, the
// volume, the mount and the agent, with no content key.
func (s *suite) withOldInjection(secret string) func(*appsv1.Deployment) {
	return func(d *appsv1.Deployment) {
		d.Labels = map[string]string{"k8secrets.io/injected": "true"}
		d.Spec.Template.Annotations = map[string]string{"k8secrets.io/secret-" + secret: secret, "k8secrets.io/hash-" + secret: "0123456789abcdef"}
		spec := &d.Spec.Template.Spec
		vol, path := "k8secrets-"+secret, mountDir+"/"+secret
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: vol, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: secret}}})
		mount := corev1.VolumeMount{Name: vol, MountPath: path, ReadOnly: true}
		spec.Containers[0].VolumeMounts = append(spec.Containers[0].VolumeMounts, mount)
		spec.Containers = append(spec.Containers, corev1.Container{
			Name: "k8secrets-agent-" + secret, Image: s.verifyAgentImage(), ImagePullPolicy: corev1.PullIfNotPresent,
			Args:         []string{"--watch=" + path, "--reload=http:http://127.0.0.1:8080/-/reload", "--listen=:9533"},
			VolumeMounts: []corev1.VolumeMount{mount},
			SecurityContext: &corev1.SecurityContext{RunAsUser: ptrTo(int64(65532)), RunAsNonRoot: ptrTo(true),
				ReadOnlyRootFilesystem: ptrTo(true), AllowPrivilegeEscalation: ptrTo(false),
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
		})
	}
}

// appVersion is the version the demo app in pod serves (GET / through the
// pod proxy): what it has loaded.
func (s *suite) appVersion(ctx context.Context, ns, pod string) (string, error) {
	v, _, err := s.appLoaded(ctx, ns, pod)
	return v, err
}

// appLoaded is the version the demo app in pod serves, and when it loaded it.
func (s *suite) appLoaded(ctx context.Context, ns, pod string) (string, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := s.Client.CoreV1().Pods(ns).ProxyGet("http", pod, "8080", "/", nil).DoRaw(ctx)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("GET / of the app in pod %s/%s: %w", ns, pod, err)
	}
	var st struct {
		Version string    `json:"version"`
		Loaded  time.Time `json:"loaded"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return "", time.Time{}, fmt.Errorf("GET / of the app in pod %s/%s: %w", ns, pod, err)
	}
	return st.Version, st.Loaded, nil
}

// contentKey is the content key of the Deployment's agent for secret, as
// bytes for the leak checks.
func (s *suite) contentKey(ctx context.Context, t *testing.T, ns, name, secret string) []byte {
	t.Helper()
	d := s.getDeployment(ctx, t, ns, name)
	for _, c := range append(append([]corev1.Container{}, d.Spec.Template.Spec.InitContainers...), d.Spec.Template.Spec.Containers...) {
		if c.Name != "k8secrets-agent-"+secret {
			continue
		}
		for _, e := range c.Env {
			if e.Name == "K8SECRETS_AGENT_CONTENT_KEY" {
				return []byte(e.Value)
			}
		}
	}
	t.Fatalf("deployment %s/%s: its agent has no content key", ns, name)
	return nil
}

// verifiedPod is one pod in the Job's JSON report.
type verifiedPod struct {
	Name, Workload, State, Reason string
}

type verification struct {
	Via            string
	Current, Total int
	Pods           []verifiedPod
	Error          string
}

// report is the part of the Job's JSON report these tests read.
type report struct {
	Workloads []struct {
		Kind, Name   string
		Verification *verification
	}
	Verification *verification
	Warnings     []string
	ExitCode     int
}

func parseReport(t *testing.T, r result) report {
	t.Helper()
	var rep report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("the Job's -o json report: %v\n%s", err, r)
	}
	return rep
}

// One Deployment's reload fails (its agent calls an app endpoint that does
// not exist), another's works, a third was injected before content keys:
// refresh --wait exits 9 naming the failing pod only, and status shows each
// pod current, failed or unknown; the apps themselves agree.
func TestVerifyStatusPerPodAndFailingReload(t *testing.T) {
	s := setup(t)
	ctx := testContext(t, 10*time.Minute)
	s.verifySetup(ctx, t)
	ns := s.Namespace(t)
	const secret = "app-creds"
	v1 := s.verifySecret(ctx, t, ns, secret, "v1")
	s.deployment(ctx, t, ns, "web", "web", 2, s.demoApp(secret))
	s.deployment(ctx, t, ns, "bad", "bad", 1, s.demoApp(secret))
	s.deployment(ctx, t, ns, "old", "old", 1, s.demoApp(secret), s.withOldInjection(secret))
	secrets := [][]byte{v1}
	for app, reload := range map[string]string{"web": "signal:SIGHUP", "bad": "http:http://127.0.0.1:8080/-/no-such-endpoint"} {
		args := []string{"inject", "-l", "app=" + app, "--secret", secret, "--agent-image", s.verifyAgentImage(), "--reload", reload}
		if r := s.job(ctx, t, "", ns, secrets, args...); r.code != 0 {
			t.Fatalf("inject %s: %s", app, r)
		}
	}
	webPods := s.settledPods(ctx, t, ns, "app=web", 2, secret, true)
	badPods := s.settledPods(ctx, t, ns, "app=bad", 1, secret, true)
	oldPods := s.settledPods(ctx, t, ns, "app=old", 1, secret, true)
	secrets = append(secrets, s.contentKey(ctx, t, ns, "web", secret), s.contentKey(ctx, t, ns, "bad", secret))

	secrets = append(secrets, s.updateVerifySecret(ctx, t, ns, secret, "v2"))
	r := s.job(ctx, t, "", ns, secrets, "refresh", "--secret", secret, "--timeout", "60s")
	bad := badPods[0].Name
	if r.code != 9 || !strings.Contains(r.stderr, bad+" (failed: reload failed") || !strings.Contains(r.stderr, "via proxy") {
		t.Errorf("refresh --wait with one failing reload: %s\nwant exit 9 naming pod %s (failed) and the way (proxy)", r, bad)
	}
	t.Logf("refresh --wait with one failing reload:\n%s", r)
	for _, p := range append(webPods, oldPods...) {
		if strings.Contains(r.stderr, p.Name+" (") {
			t.Errorf("refresh --wait named pod %s as not current:\n%s", p.Name, r.stderr)
		}
	}

	r = s.job(ctx, t, "", ns, secrets, "status", "--secret", secret, "-o", "json")
	if r.code != 0 {
		t.Fatalf("status: %s", r)
	}
	rep := parseReport(t, r)
	got := map[string]string{}
	for _, w := range rep.Workloads {
		if w.Verification == nil {
			t.Fatalf("status: %s %s has no per-pod view:\n%s", w.Kind, w.Name, r.stdout)
		}
		got[w.Name] = fmt.Sprintf("%d/%d via %s", w.Verification.Current, w.Verification.Total, w.Verification.Via)
		for _, p := range w.Verification.Pods {
			got[p.Name] = p.State + ": " + p.Reason
		}
	}
	want := map[string]string{"web": "2/2 via proxy", "bad": "0/1 via proxy", "old": "0/1 via proxy",
		bad: "failed: reload failed", oldPods[0].Name: "unknown: its agent has no K8SECRETS_AGENT_CONTENT_KEY"}
	for _, p := range webPods {
		want[p.Name] = "current: "
	}
	for k, w := range want {
		if !strings.HasPrefix(got[k], w) {
			t.Errorf("status: %s is %q; want %q", k, got[k], w)
		}
	}
	t.Logf("status per pod:\n%s", s.job(ctx, t, "", ns, secrets, "status", "--secret", secret).stdout)

	// The apps agree: web's serve v2, bad's still v1 (its reload failed).
	for _, p := range webPods {
		if v, err := s.appVersion(ctx, ns, p.Name); err != nil || v != "v2" {
			t.Errorf("pod %s, reported current: its app serves %q (%v); want v2", p.Name, v, err)
		}
	}
	if v, err := s.appVersion(ctx, ns, bad); err != nil || v != "v1" {
		t.Errorf("pod %s, reported failed: its app serves %q (%v); want v1", bad, v, err)
	}
}

// refresh --wait (the default) exits 0 only once every pod has loaded the
// new content: every app serves the new version, loaded before the Job
// exited. The agents reload by HTTP, which the demo app answers once it has
// reloaded, so an agent's "loaded" follows the app's own; the app's clock
// is this machine's (kind's node is a container here).
func TestVerifyRefreshWaitAllCurrent(t *testing.T) {
	s, ctx, ns, secret, secrets, pods := injectedWeb(t, 3)
	secrets = append(secrets, s.contentKey(ctx, t, ns, "web", secret), s.updateVerifySecret(ctx, t, ns, secret, "v2"))

	start := time.Now()
	r := s.job(ctx, t, "", ns, secrets, "refresh", "--secret", secret, "-o", "json")
	exited := time.Now()
	took := exited.Sub(start)
	if r.code != 0 {
		t.Fatalf("refresh --wait: %s", r)
	}
	for _, p := range pods {
		if v, at, err := s.appLoaded(ctx, ns, p.Name); err != nil || v != "v2" || !at.Before(exited) {
			t.Errorf("refresh --wait exited 0 at %s; pod %s's app serves %q, loaded at %s (%v); want v2, loaded before", exited.Format(time.RFC3339Nano), p.Name, v, at.Format(time.RFC3339Nano), err)
		}
	}
	rep := parseReport(t, r)
	if v := rep.Verification; v == nil || v.Via != "proxy" || v.Current != 3 || v.Total != 3 {
		t.Errorf("refresh --wait report: %+v; want 3 of 3 current via proxy\n%s", v, r.stdout)
	}
	t.Logf("refresh --wait: all 3 pods verified in %s", took.Round(time.Millisecond))
}

// In a cluster, refresh --wait reaches the agents directly (pod IP and
// port): run as a Kubernetes Job under the refresh Role and a Role that
// reads the Secret by name, with no pods/proxy, it exits 0 saying "via
// direct", and every app serves the new version.
func TestVerifyInClusterDirect(t *testing.T) {
	s, ctx, ns, secret, secrets, pods := injectedWeb(t, 2)
	secrets = append(secrets, s.contentKey(ctx, t, ns, "web", secret))

	const sa = "ci-pipeline"
	if _, err := s.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.kubectlRun(ctx, t, ns, "apply", "-f", "../../manifests/refresh/role.yaml")
	if _, err := s.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "read-app-creds"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}, ResourceNames: []string{secret}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"k8secrets-refresh", "read-app-creds"} {
		if _, err := s.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	secrets = append(secrets, s.updateVerifySecret(ctx, t, ns, secret, "v2"))

	const name = "verify-refresh"
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: batchv1.JobSpec{
		BackoffLimit: ptrTo(int32(0)),
		Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			ServiceAccountName: sa, RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "job", Image: s.jobImage(), ImagePullPolicy: corev1.PullIfNotPresent,
				Args: []string{"refresh", "--secret", secret, "--timeout", "2m"},
				SecurityContext: &corev1.SecurityContext{RunAsNonRoot: ptrTo(true), AllowPrivilegeEscalation: ptrTo(false),
					ReadOnlyRootFilesystem: ptrTo(true), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}},
		}},
	}}
	if _, err := s.Client.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var term *corev1.ContainerStateTerminated
	var pod string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 4*time.Minute, true, func(ctx context.Context) (bool, error) {
		ps, err := s.Pods(ctx, ns, "batch.kubernetes.io/job-name="+name)
		if err != nil || len(ps) == 0 {
			return false, nil
		}
		for _, cs := range ps[0].Status.ContainerStatuses {
			if cs.State.Terminated != nil {
				term, pod = cs.State.Terminated, ps[0].Name
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the refresh Job did not finish: %v\n%s", err, s.podStates(ns, "batch.kubernetes.io/job-name="+name))
	}
	logs, err := s.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: "job"}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if framework.Leaked(logs, secrets...) {
		t.Fatal("the Job's logs hold a Secret's value or the content key (withheld)")
	}
	if term.ExitCode != 0 || !strings.Contains(string(logs), "2/2 pods run the current content (asked via direct)") {
		t.Errorf("refresh --wait in the cluster: exit %d; want 0 and 2/2 pods verified via direct; logs:\n%s", term.ExitCode, logs)
	}
	for _, p := range pods {
		if v, err := s.appVersion(ctx, ns, p.Name); err != nil || v != "v2" {
			t.Errorf("after refresh --wait in the cluster, pod %s's app serves %q (%v); want v2", p.Name, v, err)
		}
	}
	t.Logf("refresh --wait in the cluster:\n%s", logs)
}

// injectedWeb injects the Secret app-creds (v1) into a Deployment "web" of
// replicas demo apps that reload by HTTP, in a namespace of its own, and
// returns once its pods have settled; secrets are the values a failure
// message must not show.
func injectedWeb(t *testing.T, replicas int32) (s *suite, ctx context.Context, ns, secret string, secrets [][]byte, pods []corev1.Pod) {
	s = setup(t)
	ctx = testContext(t, 10*time.Minute)
	s.verifySetup(ctx, t)
	ns = s.Namespace(t)
	secret = "app-creds"
	secrets = [][]byte{s.verifySecret(ctx, t, ns, secret, "v1")}
	s.deployment(ctx, t, ns, "web", "web", replicas, s.demoApp(secret))
	if r := s.job(ctx, t, "", ns, secrets, "inject", "-l", "app=web", "--secret", secret, "--agent-image", s.verifyAgentImage(), "--reload", "http:http://127.0.0.1:8080/-/reload"); r.code != 0 {
		t.Fatalf("inject: %s", r)
	}
	pods = s.settledPods(ctx, t, ns, "app=web", int(replicas), secret, true)
	return s, ctx, ns, secret, secrets, pods
}
