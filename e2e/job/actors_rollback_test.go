//go:build e2e

package job

// The Job among other actors on kind: a CD system applying the same
// Deployment, a person running kubectl during an incident. The tests check
// the pod template, managedFields, Events and pods themselves.

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

// kubectlRun runs the real kubectl against ns as the admin: the person in
// the incident.
func (s *suite) kubectlRun(ctx context.Context, t *testing.T, ns string, args ...string) {
	t.Helper()
	full := append([]string{"--kubeconfig", s.Kubeconfig, "-n", ns}, args...)
	out, err := exec.CommandContext(ctx, s.kubectl, full...).CombinedOutput()
	t.Logf("kubectl %s: %s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
}

// getDeployment reads the Deployment once.
func (s *suite) getDeployment(ctx context.Context, t *testing.T, ns, name string) *appsv1.Deployment {
	t.Helper()
	d, err := s.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// templateMounts tells whether the pod template carries a volume of secret.
func templateMounts(t *corev1.PodTemplateSpec, secret string) bool {
	for _, v := range t.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			return true
		}
	}
	return false
}

// k8secretsOwnTemplate lists the k8secrets/* managers owning any pod
// template field.
func k8secretsOwnTemplate(d *appsv1.Deployment) []string {
	var out []string
	for _, e := range d.ManagedFields {
		if !strings.HasPrefix(e.Manager, "k8secrets/") || e.FieldsV1 == nil {
			continue
		}
		var root map[string]map[string]json.RawMessage
		_ = json.Unmarshal(e.FieldsV1.Raw, &root)
		if _, ok := root["f:spec"]["f:template"]; ok {
			out = append(out, e.Manager)
		}
	}
	return out
}

func ownsEnv(d *appsv1.Deployment, manager, env string) bool {
	for _, e := range d.ManagedFields {
		if e.Manager == manager && e.FieldsV1 != nil && strings.Contains(string(e.FieldsV1.Raw), `k:{\"name\":\"`+env+`\"}`) {
			return true
		}
	}
	return false
}

func containerEnv(c *corev1.Container) map[string]string {
	out := map[string]string{}
	for _, e := range c.Env {
		out[e.Name] = e.Value
	}
	return out
}

// A CD system applies the Deployment (server-side apply, its own field
// manager) and a person runs `kubectl set env` while the Job waits for a
// rollout that fails (the agent's image does not exist). The rollback
// removes the Job's fields only: the CD's and the hotfix's changes stay in
// the template and in the running pods, stay owned by their managers, no
// k8secrets/* manager owns a template field, and an Event names them.
func TestActorsHotfixSurvivesRollback(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.deployment(ctx, t, ns, "web", "web", 2)

	p := s.start(ctx, t, "", ns, "inject", "-l", "app=web", "--secret", "db-creds", "--agent-image", missingImage, "--timeout", "40s")
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := s.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && templateMounts(&d.Spec.Template, "db-creds"), nil
	})
	if err != nil {
		t.Fatalf("the Job never applied its change: %v", err)
	}
	// The CD system re-applies its manifest, with a change of its own.
	tmpl := podTemplate("web")
	app := tmpl.Spec.Containers[0]
	sc := app.SecurityContext
	cd := appsv1ac.Deployment("web", ns).WithSpec(appsv1ac.DeploymentSpec().
		WithReplicas(2).
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{"app": "web"})).
		WithTemplate(corev1ac.PodTemplateSpec().
			WithLabels(map[string]string{"app": "web"}).
			WithSpec(corev1ac.PodSpec().WithTerminationGracePeriodSeconds(*tmpl.Spec.TerminationGracePeriodSeconds).
				WithContainers(corev1ac.Container().WithName("app").WithImage(app.Image).WithImagePullPolicy(app.ImagePullPolicy).
					WithEnv(corev1ac.EnvVar().WithName("FROM_CD").WithValue("2")).
					WithSecurityContext(corev1ac.SecurityContext().WithRunAsUser(*sc.RunAsUser).WithRunAsGroup(*sc.RunAsGroup).
						WithRunAsNonRoot(true).WithReadOnlyRootFilesystem(true).WithAllowPrivilegeEscalation(false).
						WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")))))))
	if _, err := s.Client.AppsV1().Deployments(ns).Apply(ctx, cd, metav1.ApplyOptions{FieldManager: "argocd-controller"}); err != nil {
		t.Fatal(err)
	}
	// The person's hotfix, with the real kubectl.
	s.kubectlRun(ctx, t, ns, "set", "env", "deployment/web", "HOTFIX=1")

	r := p.wait(t, [][]byte{value})
	if r.code != 5 {
		t.Fatalf("inject: %s\nwant exit 5 (rolled back)", r)
	}
	if err := s.WaitDeploymentAvailable(ctx, ns, "web", time.Minute); err != nil {
		t.Fatal(err)
	}
	d := s.getDeployment(ctx, t, ns, "web")
	if templateMounts(&d.Spec.Template, "db-creds") || len(d.Spec.Template.Spec.InitContainers) != 0 {
		t.Errorf("after the rollback the template still carries the injection: %+v", d.Spec.Template.Spec)
	}
	if env := containerEnv(&d.Spec.Template.Spec.Containers[0]); env["HOTFIX"] != "1" || env["FROM_CD"] != "2" {
		t.Errorf("after the rollback the app's env is %v; want HOTFIX=1 (kubectl) and FROM_CD=2 (CD) kept", env)
	}
	if m := k8secretsOwnTemplate(d); len(m) != 0 {
		t.Errorf("%v own pod template fields after the rollback; want none", m)
	}
	if !ownsEnv(d, "kubectl-set", "HOTFIX") || !ownsEnv(d, "argocd-controller", "FROM_CD") {
		t.Errorf("the hotfix or the CD's env is no longer owned by its manager: %+v", d.ManagedFields)
	}
	// The pods run the others' change, without the injection.
	pods := s.settledPods(ctx, t, ns, "app=web", 2, "db-creds", false)
	for i := range pods {
		if env := containerEnv(&pods[i].Spec.Containers[0]); env["HOTFIX"] != "1" || env["FROM_CD"] != "2" {
			t.Errorf("pod %s runs with env %v; want the hotfix and the CD's change", pods[i].Name, env)
		}
	}
	evs, err := s.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	named := false
	for _, e := range evs.Items {
		if e.Reason == "ChangedByOthers" && e.Regarding.Name == "web" && strings.Contains(e.Note, "kubectl-set") && strings.Contains(e.Note, "argocd-controller") {
			named = true
		}
	}
	if !named {
		t.Errorf("no ChangedByOthers Event on deployment/web naming kubectl-set and argocd-controller")
	}
}

// A rerun while someone else's rollout of the injected Deployment fails (a
// `kubectl set image` to an image that does not exist): the injection and
// their change both stay, the Job writes nothing, and exits 8.
func TestActorsRerunLeavesOthersBadImage(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.deployment(ctx, t, ns, "web", "web", 2)
	if r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=web", "db-creds", "--timeout", "2m")...); r.code != 0 {
		t.Fatalf("inject: %s", r)
	}
	// managedFields times have one-second resolution: the hotfix comes in a
	// later second than the Job's write.
	for _, e := range s.getDeployment(ctx, t, ns, "web").ManagedFields {
		if e.Manager == "k8secrets/db-creds" && e.Time != nil {
			time.Sleep(time.Until(e.Time.Add(time.Second)))
		}
	}
	bad := framework.TestAppImage + "-does-not-exist"
	s.kubectlRun(ctx, t, ns, "set", "image", "deployment/web", "app="+bad)
	var before *appsv1.Deployment
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		before, err = s.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && before.Status.ObservedGeneration == before.Generation && before.Status.UpdatedReplicas > 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}

	r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=web", "db-creds", "--timeout", "20s")...)
	if r.code != 8 || !strings.Contains(r.stdout+r.stderr, "kubectl-set") {
		t.Fatalf("rerun: %s\nwant exit 8 naming kubectl-set", r)
	}
	d := s.getDeployment(ctx, t, ns, "web")
	if d.Generation != before.Generation || !templateMounts(&d.Spec.Template, "db-creds") || d.Spec.Template.Spec.Containers[0].Image != bad {
		t.Errorf("after the rerun: generation %d -> %d, injected %t, image %s; want nothing changed",
			before.Generation, d.Generation, templateMounts(&d.Spec.Template, "db-creds"), d.Spec.Template.Spec.Containers[0].Image)
	}
	// The pods that serve (the old ReplicaSet's, kept by maxUnavailable)
	// still mount the Secret.
	ready := 0
	for _, p := range s.livePods(ctx, t, ns, "app=web") {
		if podReady(&p) {
			ready++
			if !mountsSecret(&p, "db-creds") {
				t.Errorf("Ready pod %s does not mount the Secret", p.Name)
			}
		}
	}
	if ready == 0 {
		t.Errorf("no Ready pod left:\n%s", s.podStates(ns, "app=web"))
	}
}
