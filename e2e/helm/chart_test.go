//go:build e2e

// Package helm proves the Helm chart charts/k8secrets on a real cluster:
// helm install with the inject Job enabled performs the first injection
// (the Secret mounted and read in the pods), and helm uninstall removes the
// chart's objects and nothing else (the injected workload stays injected).
//
// Environment (set by `make e2e`):
//
//	E2E_IMAGE_TAG  tag of the k8secrets-job and k8secrets-agent images loaded into the cluster
//	E2E_HELM       the helm CLI (`make helm`)
package helm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

func TestMain(m *testing.M) { os.Exit(framework.Main(m)) }

const (
	release = "k8secrets"
	secret  = "db-creds"
	// mountPath is the Job's default: /var/run/secrets/k8secrets/<secret>.
	mountPath = "/var/run/secrets/k8secrets/" + secret
)

func ptrTo[T any](v T) *T { return &v }

// helmCmd runs the helm CLI against the cluster with a private home.
func helmCmd(ctx context.Context, t *testing.T, c *framework.Cluster, args ...string) (string, error) {
	t.Helper()
	bin := os.Getenv("E2E_HELM")
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "KUBECONFIG=" + c.Kubeconfig,
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"), "HELM_CONFIG_HOME=" + filepath.Join(home, "config"), "HELM_DATA_HOME=" + filepath.Join(home, "data")}
	t.Logf("helm %s", strings.Join(args, " "))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// jobWatch records, from a watch started before helm install, whether the
// Job k8secrets-inject reached Complete or Failed: a hook Job that succeeds
// is deleted by helm right after, so it cannot be read afterwards.
func jobWatch(ctx context.Context, t *testing.T, c *framework.Cluster, ns string) <-chan batchv1.JobConditionType {
	t.Helper()
	w, err := c.Client.BatchV1().Jobs(ns).Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", "k8secrets-inject").String()})
	if err != nil {
		t.Fatalf("watch jobs in %s: %v", ns, err)
	}
	done := make(chan batchv1.JobConditionType, 1)
	go func() {
		defer w.Stop()
		defer close(done)
		for ev := range w.ResultChan() {
			j, ok := ev.Object.(*batchv1.Job)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			for _, cond := range j.Status.Conditions {
				if (cond.Type == batchv1.JobComplete || cond.Type == batchv1.JobFailed) && cond.Status == corev1.ConditionTrue {
					done <- cond.Type
					return
				}
			}
		}
	}()
	return done
}

// livePods returns the pods of app that are not being deleted.
func livePods(ctx context.Context, t *testing.T, c *framework.Cluster, ns, app string) []corev1.Pod {
	t.Helper()
	pods, err := c.Pods(ctx, ns, "app="+app)
	if err != nil {
		t.Fatal(err)
	}
	var live []corev1.Pod
	for _, p := range pods {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live
}

// checkInjected checks what a user would: each live pod of web has the
// Secret's volume, the app's read-only mount of it, the agent sidecar, and
// reads the Secret's value from the file.
func checkInjected(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, value []byte) []string {
	t.Helper()
	var names []string
	var pods []corev1.Pod
	// The Job waited for the rollout; old pods may still be terminating.
	err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		pods = livePods(ctx, t, c, ns, "web")
		return len(pods) == 2, nil
	})
	if err != nil {
		t.Fatalf("want 2 live pods of web in %s, have %d", ns, len(pods))
	}
	for _, p := range pods {
		names = append(names, p.Name)
		vol := ""
		for _, v := range p.Spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == secret {
				vol = v.Name
			}
		}
		if vol == "" {
			t.Errorf("pod %s/%s has no volume of the Secret %s: volumes %v", ns, p.Name, secret, p.Spec.Volumes)
			continue
		}
		mounted := false
		for _, m := range p.Spec.Containers[0].VolumeMounts {
			if m.Name == vol && m.MountPath == mountPath && m.ReadOnly {
				mounted = true
			}
		}
		if !mounted {
			t.Errorf("pod %s/%s: container app does not mount volume %s read-only at %s: %v", ns, p.Name, vol, mountPath, p.Spec.Containers[0].VolumeMounts)
		}
		agent := false
		for _, ic := range p.Spec.InitContainers {
			if strings.HasPrefix(ic.Name, "k8secrets-agent") && ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways {
				agent = true
			}
		}
		if !agent {
			t.Errorf("pod %s/%s has no k8secrets-agent sidecar: init containers %d", ns, p.Name, len(p.Spec.InitContainers))
		}
		got, err := c.ReadFile(ctx, ns, p.Name, "app", mountPath+"/password")
		if err != nil {
			t.Errorf("pod %s/%s: %v", ns, p.Name, err)
		} else if !bytes.Equal(got, value) {
			t.Errorf("pod %s/%s reads other content than the Secret's at %s/password (%d bytes; values withheld)", ns, p.Name, mountPath, len(got))
		}
	}
	sort.Strings(names)
	return names
}

// helm install with inject.enabled runs the inject Job as a hook against a
// Deployment and its Secret: the Job completes, both pods mount and read the
// Secret. helm uninstall then leaves no ServiceAccount, Role, RoleBinding,
// Job or release record of the chart, and the Deployment injected, its pods
// untouched.
func TestHelmInstallInjectUninstall(t *testing.T) {
	c, ctx, tag := start(t, true)
	ns := c.Namespace(t)

	b := make([]byte, 24)
	_, _ = rand.Read(b)
	value := []byte(hex.EncodeToString(b))
	if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secret},
		Data: map[string][]byte{"password": value}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.GuardSecrets(t, ns, value)

	labels := map[string]string{"app": "web"}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: appsv1.DeploymentSpec{
		Replicas: ptrTo(int32(2)), Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptrTo(int64(5)),
			Containers: []corev1.Container{{Name: "app", Image: framework.TestAppImage, ImagePullPolicy: corev1.PullIfNotPresent,
				SecurityContext: &corev1.SecurityContext{RunAsUser: ptrTo(int64(1000)), RunAsGroup: ptrTo(int64(1000)), RunAsNonRoot: ptrTo(true),
					ReadOnlyRootFilesystem: ptrTo(true), AllowPrivilegeEscalation: ptrTo(false),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}}}}}}
	if _, err := c.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitDeploymentAvailable(ctx, ns, "web", 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	chart, err := filepath.Abs("../../charts/k8secrets")
	if err != nil {
		t.Fatal(err)
	}
	jobDone := jobWatch(ctx, t, c, ns)
	start := time.Now()
	out, err := helmCmd(ctx, t, c, "install", release, chart, "-n", ns, "--timeout", "5m",
		"--set", "image.repository=k8secrets-job", "--set", "image.tag="+tag,
		"--set", "agentImage.repository=k8secrets-agent", "--set", "agentImage.tag="+tag,
		"--set", "inject.enabled=true", "--set", "inject.selector=app=web", "--set", "inject.secret="+secret,
		"--set", "inject.timeout=2m")
	if err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	t.Logf("helm install (the inject Job included) took %s", time.Since(start).Round(time.Second))
	if framework.Leaked([]byte(out), value) {
		t.Error("helm install's output carries the Secret's value (withheld)")
	}
	select {
	case cond := <-jobDone:
		if cond != batchv1.JobComplete {
			t.Fatalf("Job %s/k8secrets-inject ended %s", ns, cond)
		}
	case <-ctx.Done():
		t.Fatal("the watch never saw Job k8secrets-inject finish")
	}

	podsBefore := checkInjected(ctx, t, c, ns, value)
	web, err := c.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if web.Labels["k8secrets.io/injected"] != "true" {
		t.Fatalf("deployment %s/web lacks the label k8secrets.io/injected=true: %v", ns, web.Labels)
	}
	generation := web.Generation

	// helm upgrade runs the hook Job again; with the same values it changes
	// nothing: same generation, same pods.
	jobDone = jobWatch(ctx, t, c, ns)
	if out, err := helmCmd(ctx, t, c, "upgrade", release, chart, "-n", ns, "--reuse-values", "--timeout", "5m"); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	select {
	case cond := <-jobDone:
		if cond != batchv1.JobComplete {
			t.Fatalf("on helm upgrade, Job %s/k8secrets-inject ended %s", ns, cond)
		}
	case <-ctx.Done():
		t.Fatal("the watch never saw the upgrade's Job k8secrets-inject finish")
	}
	web, err = c.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if web.Generation != generation {
		t.Errorf("helm upgrade with the same values moved deployment %s/web from generation %d to %d; want no change", ns, generation, web.Generation)
	}
	if pods := checkInjected(ctx, t, c, ns, value); fmt.Sprint(pods) != fmt.Sprint(podsBefore) {
		t.Errorf("after helm upgrade, the pods of web are %v; want %v, untouched", pods, podsBefore)
	}

	if out, err := helmCmd(ctx, t, c, "uninstall", release, "-n", ns, "--wait", "--timeout", "2m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}

	// Nothing of the chart is left: its objects by name, and anything
	// labelled with the release.
	gone := []struct {
		kind string
		get  func() error
	}{
		{"ServiceAccount", func() error {
			_, err := c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "k8secrets-job", metav1.GetOptions{})
			return err
		}},
		{"Role", func() error {
			_, err := c.Client.RbacV1().Roles(ns).Get(ctx, "k8secrets-job", metav1.GetOptions{})
			return err
		}},
		{"RoleBinding", func() error {
			_, err := c.Client.RbacV1().RoleBindings(ns).Get(ctx, "k8secrets-job", metav1.GetOptions{})
			return err
		}},
		{"Job", func() error {
			_, err := c.Client.BatchV1().Jobs(ns).Get(ctx, "k8secrets-inject", metav1.GetOptions{})
			return err
		}},
		{"release Secret", func() error {
			l, err := c.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=" + release})
			if err == nil && len(l.Items) == 0 {
				return apierrors.NewNotFound(corev1.Resource("secrets"), "sh.helm.release.v1."+release+".*")
			}
			return err
		}},
	}
	for _, g := range gone {
		if err := g.get(); !apierrors.IsNotFound(err) {
			t.Errorf("after helm uninstall, get %s in %s: err = %v; want NotFound", g.kind, ns, err)
		}
	}
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release}
	left := 0
	if l, err := c.Client.CoreV1().ServiceAccounts(ns).List(ctx, sel); err == nil {
		left += len(l.Items)
	}
	if l, err := c.Client.RbacV1().Roles(ns).List(ctx, sel); err == nil {
		left += len(l.Items)
	}
	if l, err := c.Client.RbacV1().RoleBindings(ns).List(ctx, sel); err == nil {
		left += len(l.Items)
	}
	if l, err := c.Client.BatchV1().Jobs(ns).List(ctx, sel); err == nil {
		left += len(l.Items)
	}
	if l, err := c.Client.CoreV1().Pods(ns).List(ctx, sel); err == nil {
		left += len(l.Items)
	}
	if left > 0 {
		t.Errorf("after helm uninstall, %d objects labelled %s are left in %s", left, sel.LabelSelector, ns)
	}

	// The workload keeps its injection: same generation, same pods, the
	// Secret still read.
	web, err = c.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if web.Generation != generation || web.Labels["k8secrets.io/injected"] != "true" {
		t.Errorf("after helm uninstall, deployment %s/web has generation %d (was %d) and labels %v; want it unchanged and injected", ns, web.Generation, generation, web.Labels)
	}
	podsAfter := checkInjected(ctx, t, c, ns, value)
	if fmt.Sprint(podsAfter) != fmt.Sprint(podsBefore) {
		t.Errorf("after helm uninstall, the pods of web are %v; want %v, untouched", podsAfter, podsBefore)
	}
}

// An inject Job that fails (here: the Secret does not exist, exit 3, which
// the Job's podFailurePolicy does not retry) fails helm install and changes
// no workload; the failed Job stays for its log. helm uninstall then removes
// the RBAC objects but not the failed hook Job, which its TTL removes.
func TestHelmInstallInjectFails(t *testing.T) {
	c, ctx, tag := start(t, true)
	ns := c.Namespace(t)
	labels := map[string]string{"app": "web"}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: appsv1.DeploymentSpec{
		Replicas: ptrTo(int32(1)), Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptrTo(int64(5)),
			Containers: []corev1.Container{{Name: "app", Image: framework.TestAppImage, ImagePullPolicy: corev1.PullIfNotPresent,
				SecurityContext: &corev1.SecurityContext{RunAsUser: ptrTo(int64(1000)), RunAsNonRoot: ptrTo(true)}}}}}}}
	if _, err := c.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitDeploymentAvailable(ctx, ns, "web", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	web, err := c.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	chart, err := filepath.Abs("../../charts/k8secrets")
	if err != nil {
		t.Fatal(err)
	}
	out, err := helmCmd(ctx, t, c, "install", release, chart, "-n", ns, "--timeout", "3m",
		"--set", "image.repository=k8secrets-job", "--set", "image.tag="+tag,
		"--set", "agentImage.repository=k8secrets-agent", "--set", "agentImage.tag="+tag,
		"--set", "inject.enabled=true", "--set", "inject.selector=app=web", "--set", "inject.secret=missing")
	if err == nil {
		t.Fatalf("helm install with an inject Job for a missing Secret succeeded:\n%s", out)
	}
	t.Logf("helm install failed as it should: %v\n%s", err, out)

	job, err := c.Client.BatchV1().Jobs(ns).Get(ctx, "k8secrets-inject", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the failed inject Job is gone (%v); want it kept for its log", err)
	}
	failed := false
	for _, cond := range job.Status.Conditions {
		if cond.Type == batchv1.JobFailed && cond.Status == corev1.ConditionTrue {
			failed = true
		}
	}
	if !failed {
		t.Errorf("Job %s/k8secrets-inject conditions %v; want Failed", ns, job.Status.Conditions)
	}
	pods, err := c.Pods(ctx, ns, "batch.kubernetes.io/job-name=k8secrets-inject")
	if err != nil || len(pods) != 1 {
		t.Fatalf("pods of the failed Job: %d, %v; want 1 (exit 3 is not retried)", len(pods), err)
	}
	for _, cs := range pods[0].Status.ContainerStatuses {
		if cs.Name == "job" && (cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 3) {
			t.Errorf("the Job's container ended %+v; want exit code 3 (the Secret is missing)", cs.State)
		}
	}
	after, err := c.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.Generation != web.Generation || after.Labels["k8secrets.io/injected"] != "" {
		t.Errorf("deployment %s/web changed by a failed inject: generation %d -> %d, labels %v", ns, web.Generation, after.Generation, after.Labels)
	}

	if out, err := helmCmd(ctx, t, c, "uninstall", release, "-n", ns, "--wait", "--timeout", "2m"); err != nil {
		t.Fatalf("helm uninstall of the failed release: %v\n%s", err, out)
	}
	for _, kind := range []string{"ServiceAccount", "Role", "RoleBinding"} {
		var err error
		switch kind {
		case "ServiceAccount":
			_, err = c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "k8secrets-job", metav1.GetOptions{})
		case "Role":
			_, err = c.Client.RbacV1().Roles(ns).Get(ctx, "k8secrets-job", metav1.GetOptions{})
		case "RoleBinding":
			_, err = c.Client.RbacV1().RoleBindings(ns).Get(ctx, "k8secrets-job", metav1.GetOptions{})
		}
		if !apierrors.IsNotFound(err) {
			t.Errorf("after helm uninstall of the failed release, get %s %s/k8secrets-job: err = %v; want NotFound", kind, ns, err)
		}
	}
	// A hook's objects are not the release's: helm uninstall leaves the
	// failed Job (the chart README says so); its TTL removes it a day
	// after it failed, its pod with it.
	job, err = c.Client.BatchV1().Jobs(ns).Get(ctx, "k8secrets-inject", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("after helm uninstall of the failed release, get Job k8secrets-inject: %v; want it left (the chart README says so: update it)", err)
	}
	if job.Spec.TTLSecondsAfterFinished == nil || *job.Spec.TTLSecondsAfterFinished != 86400 {
		t.Errorf("the failed Job left behind has ttlSecondsAfterFinished %v; want 86400", job.Spec.TTLSecondsAfterFinished)
	}
}

// start checks the environment, loads the images of E2E_IMAGE_TAG into the
// cluster (the agent's and the test app too when withApp) and returns a
// context of ten minutes.
func start(t *testing.T, withApp bool) (*framework.Cluster, context.Context, string) {
	t.Helper()
	c := framework.Get(t)
	tag := os.Getenv("E2E_IMAGE_TAG")
	if tag == "" || os.Getenv("E2E_HELM") == "" {
		t.Fatal("set E2E_IMAGE_TAG (the tag of the k8secrets images loaded into the cluster) and E2E_HELM (the helm CLI: `make helm`); `make e2e` does")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	images := []string{"k8secrets-job:" + tag}
	if withApp {
		images = append(images, "k8secrets-agent:"+tag)
	}
	switch err := c.LoadImages(ctx, images...); {
	case err == nil, errors.Is(err, framework.ErrNotKind):
	default:
		t.Fatalf("%v; build them with `make images VERSION=%s`", err, tag)
	}
	if withApp {
		if err := c.BuildTestApp(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return c, ctx, tag
}
