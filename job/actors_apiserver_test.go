package main

// The Job among other actors, against a real kube-apiserver and
// kube-controller-manager (see apiserver_test.go): a CD system applying the
// same Deployment, a person's hotfix, a second injection, an admission
// policy. Each test checks the objects (pod template, managedFields,
// Events), not the Job's report.

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/internal/apitest"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// get reads the Deployment once.
func (cl *cluster) get(name string) *appsv1.Deployment {
	cl.t.Helper()
	d, err := cl.c.AppsV1().Deployments(cl.ns).Get(cl.ctx, name, metav1.GetOptions{})
	if err != nil {
		cl.t.Fatal(err)
	}
	return d
}

// waitTemplate waits until the Deployment's pod template satisfies cond.
func (cl *cluster) waitTemplate(name string, cond func(*corev1.PodTemplateSpec) bool) *appsv1.Deployment {
	cl.t.Helper()
	var d *appsv1.Deployment
	err := wait.PollUntilContextTimeout(cl.ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		d, err = cl.c.AppsV1().Deployments(cl.ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && cond(&d.Spec.Template), err
	})
	if err != nil {
		cl.t.Fatalf("deployment %s/%s: template never reached the expected state: %v", cl.ns, name, err)
	}
	return d
}

// injectedWith tells whether the template carries the injection of secret.
func injectedWith(secret string) func(*corev1.PodTemplateSpec) bool {
	return func(t *corev1.PodTemplateSpec) bool {
		for _, v := range t.Spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == secret {
				return true
			}
		}
		return false
	}
}

// k8secretsTemplateFields lists the k8secrets/* managers that own any field
// of the pod template.
func k8secretsTemplateFields(d *appsv1.Deployment) []string {
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

// owns tells whether manager has a managedFields entry owning the app
// container's env var name.
func owns(d *appsv1.Deployment, manager, env string) bool {
	for _, e := range d.ManagedFields {
		if e.Manager == manager && e.FieldsV1 != nil && strings.Contains(string(e.FieldsV1.Raw), fmt.Sprintf(`k:{\"name\":\"%s\"}`, env)) {
			return true
		}
	}
	return false
}

func envOf(t *corev1.PodTemplateSpec, container string) map[string]string {
	out := map[string]string{}
	for _, c := range t.Spec.Containers {
		if c.Name == container {
			for _, e := range c.Env {
				out[e.Name] = e.Value
			}
		}
	}
	return out
}

// setEnv is `kubectl set env deployment/name NAME=VALUE`: a strategic merge
// patch under kubectl's field manager.
func (cl *cluster) setEnv(name, env, value string) {
	cl.t.Helper()
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":"app","env":[{"name":%q,"value":%q}]}]}}}}`, env, value)
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Patch(cl.ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "kubectl-set"}); err != nil {
		cl.t.Fatal(err)
	}
}

// setImage is `kubectl set image deployment/name app=IMAGE`.
func (cl *cluster) setImage(name, image string) {
	cl.t.Helper()
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":"app","image":%q}]}}}}`, image)
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Patch(cl.ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "kubectl-set"}); err != nil {
		cl.t.Fatal(err)
	}
}

const restartedAt = "kubectl.kubernetes.io/restartedAt"

// restart is `kubectl rollout restart deployment/name`.
func (cl *cluster) restart(name string) {
	cl.t.Helper()
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{%q:%q}}}}}`, restartedAt, time.Now().Format(time.RFC3339))
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Patch(cl.ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "kubectl-rollout"}); err != nil {
		cl.t.Fatal(err)
	}
}

// cdApply is a CD system (Argo CD, Flux) applying its manifest of the
// Deployment under its own field manager: the original template plus an
// env var and an annotation of its own.
func (cl *cluster) cdApply(name, app string, replicas int32) {
	cl.t.Helper()
	ac := appsv1ac.Deployment(name, cl.ns).WithSpec(appsv1ac.DeploymentSpec().
		WithReplicas(replicas).
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{"app": app})).
		WithTemplate(corev1ac.PodTemplateSpec().
			WithLabels(map[string]string{"app": app}).
			WithAnnotations(map[string]string{"cd.example.com/revision": "2"}).
			WithSpec(corev1ac.PodSpec().WithContainers(corev1ac.Container().WithName("app").WithImage("web:1").
				WithSecurityContext(corev1ac.SecurityContext().WithRunAsUser(1000)).
				WithEnv(corev1ac.EnvVar().WithName("FROM_CD").WithValue("2"))))))
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Apply(cl.ctx, ac, metav1.ApplyOptions{FieldManager: "argocd-controller"}); err != nil {
		cl.t.Fatal(err)
	}
}

// eventNotes lists the notes of the namespace's Events of reason.
func (cl *cluster) eventNotes(reason string) []string {
	cl.t.Helper()
	l, err := cl.c.EventsV1().Events(cl.ns).List(cl.ctx, metav1.ListOptions{})
	if err != nil {
		cl.t.Fatal(err)
	}
	var out []string
	for _, e := range l.Items {
		if e.Reason == reason {
			out = append(out, e.Note)
		}
	}
	return out
}

// jobAsync runs the Job in the background; the result arrives on the channel.
func (cl *cluster) jobAsync(ctx context.Context, args ...string) <-chan result {
	done := make(chan result, 1)
	go func() { done <- cl.jobAs(ctx, cl.c, args...) }()
	return done
}

// A CD system applies the Deployment and a person hotfixes it (kubectl set
// env) while the Job waits for a rollout that fails: the rollback removes
// the Job's fields only. Both changes survive, stay owned by their
// managers, no k8secrets/* manager owns any template field, and the report
// and an Event name who changed the template.
func TestAPIRollbackKeepsOthersChanges(t *testing.T) {
	cl := newCluster(t, hasInjectedVolume)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)

	done := cl.jobAsync(cl.ctx, injectArgs("app=web", "db-creds", "--timeout", "10s")...)
	cl.waitTemplate("web", injectedWith("db-creds"))
	cl.cdApply("web", "web", 2)
	cl.setEnv("web", "HOTFIX", "1")
	cl.restart("web")
	r := <-done
	if r.code != 5 {
		t.Fatalf("inject: exit %d (%v); want 5 (rolled back)\n%s", r.code, r.err, r.logs)
	}

	d := cl.waitDeployment("web")
	tmpl := &d.Spec.Template
	if injectedWith("db-creds")(tmpl) || len(tmpl.Spec.InitContainers) != 0 || len(tmpl.Spec.Containers[0].VolumeMounts) != 0 {
		t.Errorf("after the rollback the template still carries the injection: %+v", tmpl.Spec)
	}
	if env := envOf(tmpl, "app"); env["HOTFIX"] != "1" || env["FROM_CD"] != "2" {
		t.Errorf("after the rollback the app's env is %v; want the hotfix HOTFIX=1 and the CD's FROM_CD=2 kept", env)
	}
	if tmpl.Annotations["cd.example.com/revision"] != "2" || tmpl.Annotations[restartedAt] == "" {
		t.Errorf("after the rollback the template annotations are %v; want the CD's and the restart's kept", tmpl.Annotations)
	}
	if m := k8secretsTemplateFields(d); len(m) != 0 {
		t.Errorf("managers %v own pod template fields after the rollback; want none", m)
	}
	if !owns(d, "kubectl-set", "HOTFIX") || !owns(d, "argocd-controller", "FROM_CD") {
		t.Errorf("the hotfix and the CD's env are no longer owned by their managers: %+v", d.ManagedFields)
	}
	for _, p := range cl.pods("web") {
		if p.DeletionTimestamp == nil && hasInjectedVolume(&p) {
			t.Errorf("pod %s of the failed revision is still there", p.Name)
		}
	}
	notes := cl.eventNotes("ChangedByOthers")
	if len(notes) != 1 || !strings.Contains(notes[0], "kubectl-set") || !strings.Contains(notes[0], "argocd-controller") || !strings.Contains(notes[0], "kubectl-rollout") {
		t.Errorf("ChangedByOthers events %q; want one naming kubectl-set, argocd-controller and kubectl-rollout", notes)
	}
	if !strings.Contains(errString(r.err), "left in place") || !strings.Contains(r.out, "kubectl-set") {
		t.Errorf("the report does not say who changed the template:\nerror %v\n%s", r.err, r.out)
	}
}

// waitNextSecond returns once the API server's managedFields clock (one
// second resolution) has moved past the last write by manager, so that a
// write from now on is told apart from it.
func (cl *cluster) waitNextSecond(name, manager string) {
	cl.t.Helper()
	for _, e := range cl.get(name).ManagedFields {
		if e.Manager == manager && e.Time != nil {
			time.Sleep(time.Until(e.Time.Add(time.Second)))
			return
		}
	}
	cl.t.Fatalf("no managedFields entry of %s", manager)
}

// A rerun while someone else's rollout of an injected workload fails (a bad
// image): the injection stays, the other change stays, nothing is written,
// and the exit code says "not ours".
func TestAPIRerunLeavesOthersFailingRollout(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	if r := cl.job(injectArgs("app=web", "db-creds")...); r.code != 0 {
		t.Fatalf("inject: exit %d (%v)", r.code, r.err)
	}
	cl.waitDeployment("web")
	badImage := func(p *corev1.Pod) bool { return p.Spec.Containers[0].Image == "web:bad" }
	cl.broken.Store(&badImage)
	cl.waitNextSecond("web", "k8secrets/db-creds")
	cl.setImage("web", "web:bad")
	// The controller has taken up the hotfix (its ReplicaSet exists).
	var before *appsv1.Deployment
	err := wait.PollUntilContextTimeout(cl.ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		before, err = cl.c.AppsV1().Deployments(cl.ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && before.Status.ObservedGeneration == before.Generation, err
	})
	if err != nil {
		t.Fatal(err)
	}
	rs := cl.replicaSets()

	r := cl.job(injectArgs("app=web", "db-creds", "--timeout", "5s")...)
	if r.code != 8 || !strings.Contains(errString(r.err), "kubectl-set") || !strings.Contains(r.out, "unhealthy, not ours") {
		t.Fatalf("rerun: exit %d (%v); want 8 naming kubectl-set\n%s", r.code, r.err, r.out)
	}
	d := cl.get("web")
	if d.Generation != before.Generation || cl.replicaSets() != rs {
		t.Errorf("rerun changed the deployment: generation %d -> %d, replicasets %d -> %d", before.Generation, d.Generation, rs, cl.replicaSets())
	}
	if !injectedWith("db-creds")(&d.Spec.Template) || d.Spec.Template.Spec.Containers[0].Image != "web:bad" {
		t.Errorf("after the rerun: injected %v, image %s; want the injection and the other change both kept",
			injectedWith("db-creds")(&d.Spec.Template), d.Spec.Template.Spec.Containers[0].Image)
	}
	if n := len(cl.eventNotes("RolledBack")); n != 0 {
		t.Errorf("%d RolledBack events; want none", n)
	}
}

// A re-injection from v1 to v2 (another --mount-path) interrupted mid-rollout
// and failing on the rerun goes back to v1, not to no injection.
func TestAPIInterruptedReinjectionReturnsToV1(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	if r := cl.job(injectArgs("app=web", "db-creds")...); r.code != 0 {
		t.Fatalf("inject v1: exit %d (%v)", r.code, r.err)
	}
	v1 := cl.waitDeployment("web")
	mountedAt := func(path string) func(*corev1.Pod) bool {
		return func(p *corev1.Pod) bool {
			for _, m := range p.Spec.Containers[0].VolumeMounts {
				if m.MountPath == path {
					return true
				}
			}
			return false
		}
	}
	v2Broken := mountedAt("/etc/v2")
	cl.broken.Store(&v2Broken)

	ctx, cancel := context.WithCancel(cl.ctx)
	defer cancel()
	rs := cl.replicaSets()
	go func() {
		// Interrupt once the v2 ReplicaSet exists: mid-rollout.
		_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			return cl.replicaSets() > rs, nil
		})
		cancel()
	}()
	r := cl.jobAs(ctx, cl.c, injectArgs("app=web", "db-creds", "--mount-path", "/etc/v2")...)
	if r.code == 0 || !strings.Contains(errString(r.err), "rerun to converge") {
		t.Fatalf("interrupted v2 run: exit %d (%v); want a failure saying to rerun", r.code, r.err)
	}

	r = cl.job(injectArgs("app=web", "db-creds", "--mount-path", "/etc/v2", "--timeout", "8s")...)
	if r.code != 5 {
		t.Fatalf("rerun of v2: exit %d (%v); want 5 (rolled back)\n%s", r.code, r.err, r.out)
	}
	d := cl.waitDeployment("web")
	if m := d.Spec.Template.Spec.Containers[0].VolumeMounts; len(m) != 1 || m[0].MountPath != v1.Spec.Template.Spec.Containers[0].VolumeMounts[0].MountPath {
		t.Errorf("after the rollback the app mounts %+v; want v1's mount at %s", m, v1.Spec.Template.Spec.Containers[0].VolumeMounts[0].MountPath)
	}
	if got, want := d.Spec.Template.Annotations, v1.Spec.Template.Annotations; got[hashKey] != want[hashKey] {
		t.Errorf("after the rollback the injection hash is %q; want v1's %q", got[hashKey], want[hashKey])
	}
	for _, p := range cl.pods("web") {
		if p.DeletionTimestamp == nil && (v2Broken(&p) || !podReady(&p)) {
			t.Errorf("pod %s is not a Ready v1 pod", p.Name)
		}
	}
}

const hashKey = "k8secrets.io/hash-db-creds"

// A remove interrupted mid-rollout, whose rollout then fails on the rerun:
// the rerun finishes the remove's own rollout and rolls it back to the
// injection recorded before it.
func TestAPIInterruptedRemoveResumes(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	if r := cl.job(injectArgs("app=web", "db-creds")...); r.code != 0 {
		t.Fatalf("inject: exit %d (%v)", r.code, r.err)
	}
	injected := cl.waitDeployment("web")
	// The app cannot start without its Secret any more.
	withoutSecret := func(p *corev1.Pod) bool { return !hasInjectedVolume(p) }
	cl.broken.Store(&withoutSecret)

	// The remove goes back to the first ReplicaSet, whose Progressing
	// condition (NewReplicaSetAvailable, from the inject) the controller
	// leaves as it is: the rerun must tell it from a completion after the
	// remove's write, with one-second timestamps.
	for _, c := range injected.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing {
			time.Sleep(time.Until(c.LastUpdateTime.Add(time.Second)))
		}
	}

	ctx, cancel := context.WithCancel(cl.ctx)
	defer cancel()
	go func() {
		// Interrupt once the controller has taken up the remove's write.
		_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			d, err := cl.c.AppsV1().Deployments(cl.ns).Get(ctx, "web", metav1.GetOptions{})
			return err == nil && d.Generation > injected.Generation && d.Status.ObservedGeneration == d.Generation, nil
		})
		cancel()
	}()
	r := cl.jobAs(ctx, cl.c, "remove", "-l", "app=web", "--secret", "db-creds")
	if r.code == 0 || !strings.Contains(errString(r.err), "rerun to converge") {
		t.Fatalf("interrupted remove: exit %d (%v); want a failure saying to rerun", r.code, r.err)
	}
	if injectedWith("db-creds")(&cl.get("web").Spec.Template) {
		t.Fatal("the interrupted remove did not write")
	}

	r = cl.job("remove", "-l", "app=web", "--secret", "db-creds", "--timeout", "8s")
	if r.code != 5 {
		t.Fatalf("rerun of remove: exit %d (%v); want 5 (rolled back)\n%s", r.code, r.err, r.out)
	}
	d := cl.waitDeployment("web")
	if d.Spec.Template.Annotations[hashKey] != injected.Spec.Template.Annotations[hashKey] || !injectedWith("db-creds")(&d.Spec.Template) {
		t.Errorf("after the rolled-back remove: annotations %v; want the injection back", d.Spec.Template.Annotations)
	}
	for _, p := range cl.pods("web") {
		if p.DeletionTimestamp == nil && !podReady(&p) {
			t.Errorf("pod %s is not Ready", p.Name)
		}
	}
}

// Two Secrets injected into one workload, an edit by its owner, then remove
// of one: the other injection and the owner's edit remain, in the template
// and in managedFields.
func TestAPIRemoveOneOfTwoKeepsTheRest(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-a")
	cl.secret("db-b")
	orig := cl.deployment("web", "web", 2)
	for _, s := range []string{"db-a", "db-b"} {
		if r := cl.job(injectArgs("app=web", s)...); r.code != 0 {
			t.Fatalf("inject %s: exit %d (%v)", s, r.code, r.err)
		}
	}
	cl.waitDeployment("web")
	// The owner edits the workload (as kubectl edit does: an Update).
	d := cl.get("web")
	d.Spec.Template.Spec.Containers[0].Env = append(d.Spec.Template.Spec.Containers[0].Env, corev1.EnvVar{Name: "OWNER", Value: "1"})
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Update(cl.ctx, d, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatal(err)
	}
	cl.waitDeployment("web")

	if r := cl.job("remove", "-l", "app=web", "--secret", "db-a", "--timeout", "30s"); r.code != 0 {
		t.Fatalf("remove db-a: exit %d (%v)", r.code, r.err)
	}
	d = cl.waitDeployment("web")
	tmpl := &d.Spec.Template
	if injectedWith("db-a")(tmpl) || !injectedWith("db-b")(tmpl) {
		t.Errorf("after remove db-a: volumes %+v; want db-b's only", tmpl.Spec.Volumes)
	}
	var agents []string
	for _, c := range tmpl.Spec.InitContainers {
		agents = append(agents, c.Name)
	}
	if strings.Join(agents, ",") != "k8secrets-agent-db-b" {
		t.Errorf("after remove db-a the agents are %v; want db-b's only", agents)
	}
	if m := tmpl.Spec.Containers[0].VolumeMounts; len(m) != 1 || m[0].Name != "k8secrets-db-b" {
		t.Errorf("after remove db-a the app mounts %+v; want db-b's only", m)
	}
	if envOf(tmpl, "app")["OWNER"] != "1" || !owns(d, "kubectl-edit", "OWNER") {
		t.Errorf("after remove db-a the owner's edit is gone or not the owner's: env %v", envOf(tmpl, "app"))
	}
	if tmpl.Spec.Containers[0].Image != orig.Spec.Template.Spec.Containers[0].Image {
		t.Errorf("image %s; want the owner's %s", tmpl.Spec.Containers[0].Image, orig.Spec.Template.Spec.Containers[0].Image)
	}
	if d.Labels["k8secrets.io/injected"] != "true" {
		t.Errorf("labels %v; want k8secrets.io/injected kept for db-b", d.Labels)
	}
	if m := k8secretsTemplateFields(d); strings.Join(m, ",") != "k8secrets/db-b" {
		t.Errorf("managers owning template fields: %v; want k8secrets/db-b only", m)
	}
}

// denyRestore makes the API server's admission refuse any update of a
// Deployment in ns that drops the init containers it has (as removing an
// injected agent does), and returns once a dry-run of such an update on a
// probe Deployment is refused (policies take effect asynchronously).
func (cl *cluster) denyRestore() string {
	cl.t.Helper()
	name := "deny-restore-" + cl.ns
	msg := "test policy: init containers cannot be removed"
	admission := cl.c.AdmissionregistrationV1()
	pol := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{"apps"}, APIVersions: []string{"v1"}, Resources: []string{"deployments"}},
				}}}},
			Validations: []admissionregistrationv1.Validation{{
				Expression: "!has(oldObject.spec.template.spec.initContainers) || has(object.spec.template.spec.initContainers)",
				Message:    msg,
			}},
		},
	}
	if _, err := admission.ValidatingAdmissionPolicies().Create(cl.ctx, pol, metav1.CreateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	cl.t.Cleanup(func() {
		_ = admission.ValidatingAdmissionPolicies().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
			MatchResources: &admissionregistrationv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"kubernetes.io/metadata.name": cl.ns}}}}}
	if _, err := admission.ValidatingAdmissionPolicyBindings().Create(cl.ctx, binding, metav1.CreateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	cl.t.Cleanup(func() {
		_ = admission.ValidatingAdmissionPolicyBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	probe := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "policy-probe"},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(0)), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "policy-probe"}},
			Template: podTemplate("policy-probe")}}
	probe.Spec.Template.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "x"}}
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Create(cl.ctx, probe, metav1.CreateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(cl.ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := cl.c.AppsV1().Deployments(cl.ns).Get(ctx, "policy-probe", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		d.Spec.Template.Spec.InitContainers = nil
		_, err = cl.c.AppsV1().Deployments(cl.ns).Update(ctx, d, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
		return apierrors.IsInvalid(err) || apierrors.IsForbidden(err), nil
	})
	if err != nil {
		cl.t.Fatalf("the admission policy %s never took effect: %v", name, err)
	}
	return msg
}

// When the API server refuses the restoring write (an admission policy),
// the Job exits 6 naming the refusal, and, since no one else changed the
// template, advises kubectl rollout undo; the template still carries the
// injection (the refused write changed nothing).
func TestAPIRollbackRefusedExit6(t *testing.T) {
	cl := newCluster(t, hasInjectedVolume)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	msg := cl.denyRestore()

	r := cl.job(injectArgs("app=web", "db-creds", "--timeout", "6s")...)
	if r.code != 6 {
		t.Fatalf("inject: exit %d (%v); want 6", r.code, r.err)
	}
	for _, want := range []string{msg, "Deployment " + cl.ns + "/web", "kubectl rollout undo deployment/web -n " + cl.ns} {
		if !strings.Contains(errString(r.err), want) {
			t.Errorf("error %q does not name %q", r.err, want)
		}
	}
	d := cl.get("web")
	if !injectedWith("db-creds")(&d.Spec.Template) {
		t.Errorf("the template lost the injection although the restoring write was refused")
	}
	if !strings.Contains(r.out, "rollback failed") {
		t.Errorf("report does not say rollback failed:\n%s", r.out)
	}
}

// A rerun after the Job's rollout completed, while a pod that was lost
// since cannot start again (no node for it): not the Job's rollout, so it is
// not waited for and the injection is not removed (exit 8, nothing written).
func TestAPIRerunLeavesLostPodsAlone(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	if r := cl.job(injectArgs("app=web", "db-creds")...); r.code != 0 {
		t.Fatalf("inject: exit %d (%v)", r.code, r.err)
	}
	before := cl.waitDeployment("web")
	noNode := func(*corev1.Pod) bool { return true }
	cl.broken.Store(&noNode)
	p := cl.pods("web")[0]
	if err := cl.c.CoreV1().Pods(cl.ns).Delete(cl.ctx, p.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(cl.ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := cl.c.AppsV1().Deployments(cl.ns).Get(ctx, "web", metav1.GetOptions{})
		return err == nil && d.Status.AvailableReplicas < 2, err
	})
	if err != nil {
		t.Fatal(err)
	}

	r := cl.job(injectArgs("app=web", "db-creds", "--timeout", "5s")...)
	if r.code != 8 || !strings.Contains(errString(r.err), "completed") {
		t.Fatalf("rerun: exit %d (%v); want 8 saying its rollout had completed", r.code, r.err)
	}
	d := cl.get("web")
	if d.Generation != before.Generation || !injectedWith("db-creds")(&d.Spec.Template) {
		t.Errorf("rerun changed the deployment: generation %d -> %d, injected %v", before.Generation, d.Generation, injectedWith("db-creds")(&d.Spec.Template))
	}
}

// The shipped Role, which has no update on workloads, is enough for a
// rollback (a server-side apply) and for a rerun's rollback.
func TestAPIRollbackUnderShippedRole(t *testing.T) {
	cl := newCluster(t, hasInjectedVolume)
	env := apitest.Shared(t)
	cl.secret("db-creds")
	orig := cl.deployment("web", "web", 2)
	asJob := cl.bindRole(env, "../manifests/base/role.yaml", "k8secrets-job", func(r *rbacv1.Role) {
		r.Rules[0].ResourceNames = []string{"db-creds"}
	}, func(ctx context.Context, c kubernetes.Interface) error {
		_, err := c.CoreV1().Secrets(cl.ns).Get(ctx, "db-creds", metav1.GetOptions{})
		return err
	})
	if ok, _ := canI(cl.ctx, asJob, "update", "apps", "deployments", cl.ns); ok {
		t.Fatal("the shipped Role lets the Job update deployments; want patch only")
	}
	r := cl.jobAs(cl.ctx, asJob, injectArgs("app=web", "db-creds", "--timeout", "8s")...)
	if r.code != 5 {
		t.Fatalf("inject under the shipped Role: exit %d (%v); want 5 (rolled back)\n%s", r.code, r.err, r.logs)
	}
	d := cl.waitDeployment("web")
	if !equality.Semantic.DeepEqual(d.Spec.Template, orig.Spec.Template) {
		t.Errorf("after the rollback the template is\n%+v\nwant\n%+v", d.Spec.Template, orig.Spec.Template)
	}
}

// A re-injection v1 -> v2 fails after someone changed the agent's image by
// hand during the wait: going back to v1 would take their field, so the
// rollback's apply conflicts and the Job stops with exit 6, naming them and
// not advising kubectl rollout undo; their change is not overwritten.
func TestAPIRollbackConflictExit6(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	if r := cl.job(injectArgs("app=web", "db-creds")...); r.code != 0 {
		t.Fatalf("inject v1: exit %d (%v)", r.code, r.err)
	}
	cl.waitDeployment("web")
	notV1 := func(p *corev1.Pod) bool {
		return len(p.Spec.InitContainers) > 0 && p.Spec.InitContainers[0].Image != "k8secrets-agent:test"
	}
	cl.broken.Store(&notV1)

	done := cl.jobAsync(cl.ctx, injectArgs("app=web", "db-creds", "--agent-image", "k8secrets-agent:v2", "--timeout", "8s")...)
	cl.waitTemplate("web", func(t *corev1.PodTemplateSpec) bool {
		return len(t.Spec.InitContainers) > 0 && t.Spec.InitContainers[0].Image == "k8secrets-agent:v2"
	})
	patch := `{"spec":{"template":{"spec":{"initContainers":[{"name":"k8secrets-agent-db-creds","image":"k8secrets-agent:hotfix"}]}}}}`
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Patch(cl.ctx, "web", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "kubectl-set"}); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.code != 6 {
		t.Fatalf("v2: exit %d (%v); want 6", r.code, r.err)
	}
	msg := errString(r.err)
	t.Logf("exit 6: %s", msg)
	for _, want := range []string{"conflict", "kubectl-set", "do not run kubectl rollout undo"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	d := cl.get("web")
	if img := d.Spec.Template.Spec.InitContainers[0].Image; img != "k8secrets-agent:hotfix" {
		t.Errorf("agent image %s after the refused rollback; want the hotfix kept", img)
	}
	for _, e := range d.ManagedFields {
		if strings.HasPrefix(e.Manager, "k8secrets/") && e.FieldsV1 != nil && strings.Contains(string(e.FieldsV1.Raw), `"f:image"`) {
			t.Errorf("%s owns an image field after the conflict: %s", e.Manager, e.FieldsV1.Raw)
		}
	}
}
