package main

// Tests against a real kube-apiserver and kube-controller-manager (started by
// internal/apitest from the binaries `make unit` builds). There is no kubelet:
// a stand-in marks pods Running and Ready, or, for "broken" pods, leaves them
// Pending, so the real deployment and statefulset controllers roll out.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/k8secrets/k8secrets/internal/apitest"
	"github.com/k8secrets/k8secrets/job/internal/config"
	"github.com/k8secrets/k8secrets/job/internal/lock"
	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/record"
	"github.com/k8secrets/k8secrets/job/internal/rollout"
)

func TestMain(m *testing.M) { os.Exit(apitest.Main(m, apitest.WithControllerManager())) }

// standInKubelet marks the namespace's pods Running and Ready, except those
// broken says never start. It lists every 100ms rather than watching, so that
// a pod left Pending starts once broken changes its mind.
func standInKubelet(ctx context.Context, t *testing.T, c kubernetes.Interface, ns string, broken func(*corev1.Pod) bool) {
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			l, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				continue
			}
			for i := range l.Items {
				p := &l.Items[i]
				if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodRunning || broken(p) {
					continue
				}
				now := metav1.Now()
				p.Status.Phase = corev1.PodRunning
				p.Status.StartTime = &now
				p.Status.Conditions = []corev1.PodCondition{
					{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
					{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
					{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
					{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				}
				if _, err := c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
					t.Logf("stand-in kubelet: %v", err)
				}
			}
		}
	}()
}

func hasInjectedVolume(p *corev1.Pod) bool {
	for _, v := range p.Spec.Volumes {
		if strings.HasPrefix(v.Name, "k8secrets-") {
			return true
		}
	}
	return false
}

func never(*corev1.Pod) bool { return false }

type cluster struct {
	t      *testing.T
	ctx    context.Context
	c      kubernetes.Interface
	ns     string
	broken atomic.Pointer[func(*corev1.Pod) bool]
}

func newCluster(t *testing.T, broken func(*corev1.Pod) bool) *cluster {
	env := apitest.Shared(t)
	ns := env.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	cl := &cluster{t: t, ctx: ctx, c: env.Client, ns: ns}
	cl.broken.Store(&broken)
	standInKubelet(ctx, t, env.Client, ns, func(p *corev1.Pod) bool { return (*cl.broken.Load())(p) })
	return cl
}

func (cl *cluster) secret(name string) {
	cl.t.Helper()
	_, err := cl.c.CoreV1().Secrets(cl.ns).Create(cl.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name},
		Data: map[string][]byte{"password": []byte(secretValue)}}, metav1.CreateOptions{})
	if err != nil {
		cl.t.Fatal(err)
	}
}

func podTemplate(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "web:1",
			SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To(int64(1000))}}}},
	}
}

// deployment creates a Deployment and waits until it is available.
func (cl *cluster) deployment(name, app string, replicas int32) *appsv1.Deployment {
	cl.t.Helper()
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(replicas), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			Template: podTemplate(app)}}
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Create(cl.ctx, d, metav1.CreateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	return cl.waitDeployment(name)
}

func (cl *cluster) waitDeployment(name string) *appsv1.Deployment {
	cl.t.Helper()
	var d *appsv1.Deployment
	err := wait.PollUntilContextTimeout(cl.ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		d, err = cl.c.AppsV1().Deployments(cl.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return d.Status.ObservedGeneration == d.Generation && d.Status.AvailableReplicas == *d.Spec.Replicas &&
			d.Status.UpdatedReplicas == *d.Spec.Replicas && d.Status.Replicas == *d.Spec.Replicas, nil
	})
	if err != nil {
		cl.t.Fatalf("deployment %s/%s not available: %v (status %+v)", cl.ns, name, err, d.Status)
	}
	return d
}

func (cl *cluster) statefulSet(name, app string, replicas int32, strategy appsv1.StatefulSetUpdateStrategyType) *appsv1.StatefulSet {
	cl.t.Helper()
	s := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.StatefulSetSpec{Replicas: ptr.To(replicas), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			Template: podTemplate(app), UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: strategy}}}
	if _, err := cl.c.AppsV1().StatefulSets(cl.ns).Create(cl.ctx, s, metav1.CreateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(cl.ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		s, err = cl.c.AppsV1().StatefulSets(cl.ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && s.Status.ObservedGeneration == s.Generation && s.Status.ReadyReplicas == replicas, err
	})
	if err != nil {
		cl.t.Fatalf("statefulset %s/%s not ready: %v", cl.ns, name, err)
	}
	return s
}

// job runs the Job's command line against the real API server as an admin.
func (cl *cluster) job(args ...string) result {
	cl.t.Helper()
	return cl.jobAs(cl.ctx, cl.c, args...)
}

// jobAs runs the Job's command line with ctx and client.
func (cl *cluster) jobAs(ctx context.Context, client kubernetes.Interface, args ...string) result {
	cl.t.Helper()
	args = append([]string{args[0], "-n", cl.ns}, args[1:]...)
	cfg, err := config.Parse(args, func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		cl.t.Fatalf("parse %q: %v", args, err)
	}
	var logs, out bytes.Buffer
	rep, err := run(ctx, cfg, client, cl.ns, slog.New(slog.NewTextHandler(&logs, nil)))
	_ = rep.Write(&out, cfg.Output)
	r := result{code: exitCode(err), err: err, out: out.String(), logs: logs.String()}
	for _, s := range []string{r.out, r.logs, errString(err)} {
		if strings.Contains(s, secretValue) {
			cl.t.Fatal("a Secret value reached the report, a log line or an error")
		}
	}
	return r
}

func (cl *cluster) pods(app string) []corev1.Pod {
	cl.t.Helper()
	l, err := cl.c.CoreV1().Pods(cl.ns).List(cl.ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		cl.t.Fatal(err)
	}
	return l.Items
}

func (cl *cluster) replicaSets() int {
	l, err := cl.c.AppsV1().ReplicaSets(cl.ns).List(cl.ctx, metav1.ListOptions{})
	if err != nil {
		cl.t.Fatal(err)
	}
	return len(l.Items)
}

func (cl *cluster) events(reason string) []string {
	l, err := cl.c.EventsV1().Events(cl.ns).List(cl.ctx, metav1.ListOptions{})
	if err != nil {
		cl.t.Fatal(err)
	}
	var out []string
	for _, e := range l.Items {
		if e.Reason == reason {
			out = append(out, e.Regarding.Kind+"/"+e.Regarding.Name)
		}
	}
	return out
}

func injectArgs(selector, secret string, extra ...string) []string {
	return append([]string{"inject", "-l", selector, "--secret", secret, "--agent-image", "k8secrets-agent:test", "--timeout", "30s"}, extra...)
}

// Inject, rerun, status and remove on a Deployment and a StatefulSet, rolled
// out by the real controllers.
func TestAPIInjectRerunRemove(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	orig := cl.deployment("web", "web", 2)
	origSts := cl.statefulSet("db", "web", 2, appsv1.RollingUpdateStatefulSetStrategyType)

	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 0 {
		t.Fatalf("inject: exit %d: %v\n%s", r.code, r.err, r.logs)
	}
	d := cl.waitDeployment("web")
	spec := d.Spec.Template.Spec
	if volumeNames(spec.Volumes) != restartInjection || spec.Volumes[0].Secret == nil || spec.Volumes[0].Secret.SecretName != "db-creds" {
		t.Errorf("deployment volumes = %+v; want the db-creds secret volume and the agent's turn file", spec.Volumes)
	}
	if m := spec.Containers[0].VolumeMounts; len(m) != 1 || m[0].MountPath != "/var/run/secrets/k8secrets/db-creds" || !m[0].ReadOnly {
		t.Errorf("app mounts = %+v; want a read-only mount at the default path", m)
	}
	if ic := spec.InitContainers; len(ic) != 1 || ic[0].Name != "k8secrets-agent-db-creds" || ic[0].RestartPolicy == nil || *ic[0].RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("init containers = %+v; want the agent as a native sidecar", ic)
	}
	if d.Labels["k8secrets.io/injected"] != "true" || d.Spec.Template.Annotations[plan.HashAnnotation("db-creds")] == "" {
		t.Errorf("marks: labels %v annotations %v", d.Labels, d.Spec.Template.Annotations)
	}
	for _, p := range cl.pods("web") {
		if p.DeletionTimestamp == nil && !hasInjectedVolume(&p) {
			t.Errorf("pod %s has no injected volume after the rollout", p.Name)
		}
	}
	if ev := cl.events("Injected"); len(ev) != 2 {
		t.Errorf("Injected events on %v; want the deployment and the statefulset", ev)
	}

	// A rerun changes nothing: no new ReplicaSet, no new generation.
	rs, gen := cl.replicaSets(), d.Generation
	r = cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 0 || strings.Count(r.out, "unchanged") != 2 {
		t.Fatalf("rerun: exit %d (%v); report:\n%s", r.code, r.err, r.out)
	}
	d, _ = cl.c.AppsV1().Deployments(cl.ns).Get(cl.ctx, "web", metav1.GetOptions{})
	if cl.replicaSets() != rs || d.Generation != gen {
		t.Errorf("rerun: replicasets %d -> %d, generation %d -> %d; want no change", rs, cl.replicaSets(), gen, d.Generation)
	}

	r = cl.job("status")
	if r.code != 0 || !strings.Contains(r.out, "Deployment") || !strings.Contains(r.out, "StatefulSet") || !strings.Contains(r.out, "db-creds") {
		t.Errorf("status: exit %d; report:\n%s", r.code, r.out)
	}

	r = cl.job("remove", "-l", "app=web", "--secret", "db-creds", "--timeout", "30s")
	if r.code != 0 {
		t.Fatalf("remove: exit %d: %v", r.code, r.err)
	}
	d = cl.waitDeployment("web")
	if !equality.Semantic.DeepEqual(d.Spec.Template, orig.Spec.Template) {
		t.Errorf("remove left deployment template\n%+v\nwant the original\n%+v", d.Spec.Template, orig.Spec.Template)
	}
	s, _ := cl.c.AppsV1().StatefulSets(cl.ns).Get(cl.ctx, "db", metav1.GetOptions{})
	if !equality.Semantic.DeepEqual(s.Spec.Template, origSts.Spec.Template) {
		t.Errorf("remove left statefulset template\n%+v\nwant the original\n%+v", s.Spec.Template, origSts.Spec.Template)
	}
	if _, ok := d.Labels["k8secrets.io/injected"]; ok {
		t.Errorf("remove left the injected label: %v", d.Labels)
	}
}

// A rollout that never becomes healthy is rolled back to the exact previous
// template, and the pods are healthy again.
func TestAPIFailedRolloutRollsBack(t *testing.T) {
	cl := newCluster(t, hasInjectedVolume)
	cl.secret("db-creds")
	orig := cl.deployment("web", "web", 2)
	// --timeout bounds the rollback's wait too: leave the controllers room
	// on a loaded 2-core machine.
	r := cl.job(injectArgs("app=web", "db-creds", "--timeout", "8s")...)
	if r.code != 5 {
		t.Fatalf("inject: exit %d (%v); want 5", r.code, r.err)
	}
	d := cl.waitDeployment("web")
	if !equality.Semantic.DeepEqual(d.Spec.Template, orig.Spec.Template) {
		t.Errorf("after rollback the template is\n%+v\nwant\n%+v", d.Spec.Template, orig.Spec.Template)
	}
	for _, p := range cl.pods("web") {
		if hasInjectedVolume(&p) && p.DeletionTimestamp == nil {
			t.Errorf("pod %s of the failed revision is still there", p.Name)
		}
	}
	if len(cl.events("RolloutFailed")) != 1 || len(cl.events("RolledBack")) != 1 {
		t.Errorf("events RolloutFailed %v, RolledBack %v; want one each", cl.events("RolloutFailed"), cl.events("RolledBack"))
	}
	if !strings.Contains(r.out, "rolled back") {
		t.Errorf("report does not say rolled back:\n%s", r.out)
	}
}

// A StatefulSet whose new revision never becomes Ready: its template is
// restored and the stuck pod of the bad revision is replaced.
func TestAPIStatefulSetRollback(t *testing.T) {
	cl := newCluster(t, hasInjectedVolume)
	cl.secret("db-creds")
	orig := cl.statefulSet("db", "db", 3, appsv1.RollingUpdateStatefulSetStrategyType)
	r := cl.job(injectArgs("app=db", "db-creds", "--timeout", "8s")...)
	if r.code != 5 {
		t.Fatalf("inject: exit %d (%v); want 5", r.code, r.err)
	}
	s, _ := cl.c.AppsV1().StatefulSets(cl.ns).Get(cl.ctx, "db", metav1.GetOptions{})
	if !equality.Semantic.DeepEqual(s.Spec.Template, orig.Spec.Template) {
		t.Errorf("after rollback the template differs from the original")
	}
	ready := 0
	for _, p := range cl.pods("db") {
		if hasInjectedVolume(&p) {
			t.Errorf("pod %s of the failed revision is still there", p.Name)
		}
		if podReady(&p) {
			ready++
		}
	}
	if ready != 3 {
		t.Errorf("%d of 3 pods ready after the rollback", ready)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// With the OnDelete strategy the Job replaces the pods itself, one at a
// time, highest ordinal first.
func TestAPIStatefulSetOnDelete(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.statefulSet("db", "db", 3, appsv1.OnDeleteStatefulSetStrategyType)
	r := cl.job(injectArgs("app=db", "db-creds")...)
	if r.code != 0 {
		t.Fatalf("inject: exit %d: %v\n%s", r.code, r.err, r.logs)
	}
	var order []string
	for _, line := range strings.Split(r.logs, "\n") {
		if i := strings.Index(line, "OnDelete: deleting pod "); i >= 0 {
			order = append(order, strings.Fields(line[i+len("OnDelete: deleting pod "):])[0])
		}
	}
	if strings.Join(order, ",") != "db-2,db-1,db-0" {
		t.Errorf("pods deleted in order %v; want db-2, db-1, db-0", order)
	}
	for _, p := range cl.pods("db") {
		if !hasInjectedVolume(&p) || !podReady(&p) {
			t.Errorf("pod %s: injected %v, ready %v; want both", p.Name, hasInjectedVolume(&p), podReady(&p))
		}
	}
}

// A server-side dry-run rejection (here a ValidatingAdmissionPolicy) stops
// the run before any change: exit 4, every object untouched.
func TestAPIDryRunRejectedChangesNothing(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	cl.deployment("web2", "web", 1)
	msg := apitest.NoInitContainers(cl.ctx, t, cl.c, cl.ns, "web2")
	before := cl.versions()
	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 4 || !strings.Contains(errString(r.err), msg) {
		t.Fatalf("inject: exit %d (%v); want 4 naming the policy's message", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed although the plan was rejected:\nbefore %s\nafter  %s", before, after)
	}
}

// versions lists every workload, ReplicaSet, pod and lease with its
// resourceVersion.
func (cl *cluster) versions() string {
	cl.t.Helper()
	var b strings.Builder
	ds, _ := cl.c.AppsV1().Deployments(cl.ns).List(cl.ctx, metav1.ListOptions{})
	for _, o := range ds.Items {
		fmt.Fprintf(&b, "deploy/%s@%s ", o.Name, o.ResourceVersion)
	}
	rs, _ := cl.c.AppsV1().ReplicaSets(cl.ns).List(cl.ctx, metav1.ListOptions{})
	for _, o := range rs.Items {
		fmt.Fprintf(&b, "rs/%s@%s ", o.Name, o.ResourceVersion)
	}
	ps, _ := cl.c.CoreV1().Pods(cl.ns).List(cl.ctx, metav1.ListOptions{})
	for _, o := range ps.Items {
		fmt.Fprintf(&b, "pod/%s@%s ", o.Name, o.ResourceVersion)
	}
	ls, _ := cl.c.CoordinationV1().Leases(cl.ns).List(cl.ctx, metav1.ListOptions{})
	for _, o := range ls.Items {
		fmt.Fprintf(&b, "lease/%s@%s ", o.Name, o.ResourceVersion)
	}
	return b.String()
}

// The Job works under the shipped Role alone, and the Role lets it read no
// other Secret and touch no other namespace.
func TestAPIShippedRoleIsEnough(t *testing.T) {
	cl := newCluster(t, never)
	env := apitest.Shared(t)
	cl.secret("db-creds")
	cl.secret("other")
	cl.deployment("web", "web", 1)

	asJob := cl.bindRole(env, "../manifests/base/role.yaml", "k8secrets-job", func(r *rbacv1.Role) {
		r.Rules[0].ResourceNames = []string{"db-creds"} // as the secret-access component does
	}, func(ctx context.Context, c kubernetes.Interface) error {
		_, err := c.CoreV1().Secrets(cl.ns).Get(ctx, "db-creds", metav1.GetOptions{})
		return err
	})

	r := cl.jobAs(cl.ctx, asJob, injectArgs("app=web", "db-creds")...)
	if r.code != 0 {
		t.Fatalf("inject under the shipped Role: exit %d: %v\n%s", r.code, r.err, r.logs)
	}
	if ev := cl.events("Injected"); len(ev) != 1 {
		t.Errorf("Injected events %v; want one", ev)
	}
	r = cl.jobAs(cl.ctx, asJob, injectArgs("app=web", "other")...)
	if r.code != 3 || !strings.Contains(errString(r.err), `grant verb "get" on resource "secrets"`) {
		t.Errorf("inject of a Secret the Role does not name: exit %d (%v); want 3 naming the missing verb", r.code, r.err)
	}
	other := env.Namespace(t)
	r = cl.jobAs(cl.ctx, asJob, append(injectArgs("app=web", "db-creds"), "-n", other)...)
	if r.code == 0 || !apierrors.IsForbidden(errors.Unwrap(r.err)) && !strings.Contains(errString(r.err), "forbidden") {
		t.Errorf("inject in another namespace: exit %d (%v); want forbidden", r.code, r.err)
	}
	for _, verb := range []string{"create", "delete"} {
		ok, err := canI(cl.ctx, asJob, verb, "", "secrets", cl.ns)
		if err != nil || ok {
			t.Errorf("can the Job %s secrets? %v (%v); want no", verb, ok, err)
		}
	}
	if ok, _ := canI(cl.ctx, asJob, "patch", "apps", "deployments", other); ok {
		t.Errorf("the Job may patch deployments in another namespace")
	}
}

// bindRole creates the Role in file (changed by mutate, if given) in the
// test's namespace, binds it to user, and returns a client acting as user
// once ready says the binding has taken effect (RBAC is asynchronous).
func (cl *cluster) bindRole(env *apitest.Env, file, user string, mutate func(*rbacv1.Role), ready func(context.Context, kubernetes.Interface) error) kubernetes.Interface {
	cl.t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		cl.t.Fatal(err)
	}
	var role rbacv1.Role
	if err := yaml.UnmarshalStrict(raw, &role); err != nil {
		cl.t.Fatalf("%s: %v", file, err)
	}
	if mutate != nil {
		mutate(&role)
	}
	if _, err := cl.c.RbacV1().Roles(cl.ns).Create(cl.ctx, &role, metav1.CreateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	_, err = cl.c.RbacV1().RoleBindings(cl.ns).Create(cl.ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}, metav1.CreateOptions{})
	if err != nil {
		cl.t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(env.As(user))
	if err != nil {
		cl.t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(cl.ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		return ready(ctx, c) == nil, nil
	})
	if err != nil {
		cl.t.Fatalf("role %s for %s never took effect: %v", role.Name, user, err)
	}
	return c
}

func canI(ctx context.Context, c kubernetes.Interface, verb, group, resource, ns string) (bool, error) {
	r, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: ns, Verb: verb, Group: group, Resource: resource}}}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return r.Status.Allowed, nil
}

// A second run while the first holds the lock exits 7 at once.
func TestAPIConcurrentRunExits7(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	l, err := lock.Acquire(cl.ctx, cl.c, cl.ns, "k8secrets-db-creds", "first-run", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 7 || !strings.Contains(errString(r.err), "held by first-run") {
		t.Fatalf("second run: exit %d (%v); want 7 naming the holder", r.code, r.err)
	}
	// It gives up once it has seen the holder renew (about two
	// lock.RetryPeriods), well before it could take an idle lease over.
	if d := time.Since(start); d > lock.Duration {
		t.Errorf("second run took %s to give up; want it to see the holder renew, within %s", d, lock.Duration)
	}
	if err := l.Release(cl.ctx); err != nil {
		t.Fatal(err)
	}
	if r := cl.job(injectArgs("app=web", "db-creds")...); r.code != 0 {
		t.Fatalf("after release: exit %d: %v", r.code, r.err)
	}
}

// A run interrupted mid-rollout, started again, waits for the rollout it had
// started instead of starting another.
func TestAPIInterruptedRunConverges(t *testing.T) {
	cl := newCluster(t, hasInjectedVolume)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	ctx, cancel := context.WithCancel(cl.ctx)
	go func() {
		// Interrupt once the new ReplicaSet exists: mid-rollout.
		_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			return cl.replicaSets() >= 2, nil
		})
		time.Sleep(500 * time.Millisecond)
		cancel()
	}()
	r := cl.jobAs(ctx, cl.c, injectArgs("app=web", "db-creds")...)
	if r.code == 0 || !strings.Contains(errString(r.err), "rerun to converge") {
		t.Fatalf("interrupted run: exit %d (%v); want a failure saying to rerun", r.code, r.err)
	}
	rs := cl.replicaSets()
	healthy := func(*corev1.Pod) bool { return false }
	cl.broken.Store(&healthy)
	r = cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 0 || !strings.Contains(r.out, "waited for its unfinished rollout") {
		t.Fatalf("rerun: exit %d (%v); report:\n%s", r.code, r.err, r.out)
	}
	if cl.replicaSets() != rs {
		t.Errorf("rerun created a ReplicaSet (%d -> %d); want it to finish the first rollout", rs, cl.replicaSets())
	}
	// One read right after the rerun exits, no polling: the rollout it
	// waited for is complete.
	d, err := cl.c.AppsV1().Deployments(cl.ns).Get(cl.ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s, want := d.Status, *d.Spec.Replicas; s.ObservedGeneration != d.Generation || s.UpdatedReplicas != want || s.AvailableReplicas != want || s.Replicas != want {
		t.Errorf("right after the rerun: generation %d, status %+v; want observed, %d replicas all updated and available", d.Generation, s, want)
	}
	if !strings.HasPrefix(d.Spec.Template.Spec.Volumes[0].Name, "k8secrets-") {
		t.Errorf("deployment not injected after the rerun")
	}
}

// --dry-run prints the server's view of each change as a diff and changes
// nothing; -o json is machine-readable.
func TestAPIDryRunDiffAndJSON(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	before := cl.versions()
	r := cl.job(injectArgs("app=web", "db-creds", "--dry-run", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("dry-run: exit %d: %v", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("dry-run changed objects:\nbefore %s\nafter  %s", before, after)
	}
	var rep record.Report
	if err := json.Unmarshal([]byte(r.out), &rep); err != nil {
		t.Fatalf("-o json output is not JSON: %v\n%s", err, r.out)
	}
	if len(rep.Workloads) != 1 || rep.Workloads[0].Result != record.WouldChange || rep.ExitCode != 0 {
		t.Fatalf("report = %+v", rep)
	}
	diff := rep.Workloads[0].Diff
	for _, want := range []string{"+  - name: k8secrets-db-creds", "+      secretName: db-creds", "+    restartPolicy: Always", "+  shareProcessNamespace: true"} {
		if !strings.Contains(diff, want) {
			t.Errorf("diff lacks %q:\n%s", want, diff)
		}
	}
}

// refresh annotates every pod that mounts the Secret; where the agent
// restarts the app it goes one pod at a time, each restarted and Ready before
// the next. It runs under manifests/refresh/role.yaml alone.
func TestAPIRefresh(t *testing.T) {
	cl := newCluster(t, never)
	env := apitest.Shared(t)
	cl.secret("db-creds")
	cl.deployment("web", "web", 3)
	if r := cl.job(injectArgs("app=web", "db-creds", "--reload", "restart")...); r.code != 0 {
		t.Fatalf("inject: exit %d: %v", r.code, r.err)
	}
	cl.waitDeployment("web")
	cl.deployment("other", "other", 1) // mounts nothing: must not be touched

	// Stand-in agent: 300ms after a pod is poked, its app restarts.
	restartedAt := map[string]time.Time{}
	var mu sync.Mutex
	go func() {
		for cl.ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			l, err := cl.c.CoreV1().Pods(cl.ns).List(cl.ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				continue
			}
			for i := range l.Items {
				p := &l.Items[i]
				at, err := time.Parse(time.RFC3339Nano, p.Annotations["k8secrets.io/refreshed-at"])
				mu.Lock()
				_, done := restartedAt[p.Name]
				mu.Unlock()
				if err != nil || done || time.Since(at) < 300*time.Millisecond {
					continue
				}
				p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", RestartCount: 1, Ready: true}}
				restarted := time.Now() // before the update: the Job may see it at once
				if _, err := cl.c.CoreV1().Pods(cl.ns).UpdateStatus(cl.ctx, p, metav1.UpdateOptions{}); err == nil {
					mu.Lock()
					restartedAt[p.Name] = restarted
					mu.Unlock()
				}
			}
		}
	}()

	asCI := cl.bindRole(env, "../manifests/refresh/role.yaml", "ci-pipeline", nil, func(ctx context.Context, c kubernetes.Interface) error {
		_, err := c.CoreV1().Pods(cl.ns).List(ctx, metav1.ListOptions{})
		return err
	})

	r := cl.jobAs(cl.ctx, asCI, "refresh", "--secret", "db-creds", "--settle", "20s", "--wait=false")
	if r.code != 0 {
		t.Fatalf("refresh: exit %d: %v\n%s", r.code, r.err, r.logs)
	}
	if n := strings.Count(r.out, "refreshed, restarted"); n != 3 {
		t.Errorf("report lists %d restarted pods; want 3:\n%s", n, r.out)
	}
	pods := cl.pods("web")
	sort.Slice(pods, func(i, j int) bool {
		return pods[i].Annotations["k8secrets.io/refreshed-at"] < pods[j].Annotations["k8secrets.io/refreshed-at"]
	})
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(pods); i++ {
		poked, _ := time.Parse(time.RFC3339Nano, pods[i].Annotations["k8secrets.io/refreshed-at"])
		if prev := restartedAt[pods[i-1].Name]; prev.IsZero() || poked.Before(prev) {
			t.Errorf("pod %s was poked at %s, before pod %s had restarted (%s)", pods[i].Name, poked, pods[i-1].Name, prev)
		}
	}
	for _, p := range cl.pods("other") {
		if _, ok := p.Annotations["k8secrets.io/refreshed-at"]; ok {
			t.Errorf("pod %s, which does not mount the Secret, was annotated", p.Name)
		}
	}
}

// The API server unreachable mid-rollout: a clear error (exit 1) and no
// blind rollback; a rerun takes the dead run's lock over only once it has
// seen it idle for the lease's duration, then converges.
func TestAPIUnreachableMidRun(t *testing.T) {
	cl := newCluster(t, hasInjectedVolume)
	env := apitest.Shared(t)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)

	proxy := apitest.NewCutProxy(t, env.Config.Host)
	cfg := rest.CopyConfig(env.Config)
	cfg.Host = proxy.URL()
	viaProxy, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = wait.PollUntilContextTimeout(cl.ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			return cl.replicaSets() >= 2, nil
		})
		proxy.Cut()
	}()
	start := time.Now()
	r := cl.jobAs(cl.ctx, viaProxy, injectArgs("app=web", "db-creds", "--timeout", "5s")...)
	if r.code != 1 || !strings.Contains(errString(r.err), "lost contact with the API server") || !strings.Contains(errString(r.err), "rerun to converge") {
		t.Fatalf("cut-off run: exit %d (%v); want 1, naming the lost contact and what to do", r.code, r.err)
	}
	t.Logf("cut-off run ended after %s", time.Since(start).Round(time.Millisecond))
	if n := len(cl.events("RolledBack")); n != 0 {
		t.Errorf("%d RolledBack events: the cut-off run must not roll back blindly", n)
	}

	healthy := func(*corev1.Pod) bool { return false }
	cl.broken.Store(&healthy)
	// The dead run's lease is taken over once the rerun has seen it
	// unchanged for lock.Duration on its own clock (leaderelection's rule),
	// not before.
	start = time.Now()
	last := cl.job(injectArgs("app=web", "db-creds")...)
	if last.code != 0 || !strings.Contains(last.out, "unchanged") {
		t.Fatalf("rerun after the lease expired: exit %d (%v); report:\n%s", last.code, last.err, last.out)
	}
	if d := time.Since(start); d < lock.Duration {
		t.Errorf("rerun took the dead run's lease over after %s; want no sooner than %s of watching it", d, lock.Duration)
	}
	// Converged on the first run's rollout: injected, available, and no
	// third ReplicaSet.
	d := cl.waitDeployment("web")
	if volumeNames(d.Spec.Template.Spec.Volumes) != restartInjection || cl.replicaSets() != 2 {
		t.Errorf("after the rerun: volumes %v, %d ReplicaSets; want the injected template and 2", d.Spec.Template.Spec.Volumes, cl.replicaSets())
	}
}

// --max-parallel 2 rolls out two workloads at a time, never more, as seen in
// the Deployments themselves: a watch counts the Deployments whose new
// generation is written but not yet rolled out.
func TestAPIMaxParallel(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	names := []string{"w1", "w2", "w3", "w4"}
	gen := map[string]int64{}
	for _, n := range names {
		gen[n] = cl.deployment(n, n, 2).Generation
	}
	l, err := cl.c.AppsV1().Deployments(cl.ns).List(cl.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := cl.c.AppsV1().Deployments(cl.ns).Watch(cl.ctx, metav1.ListOptions{ResourceVersion: l.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	type counts struct{ inFlight, maxInFlight, done int }
	seen := make(chan counts, 100)
	go func() {
		state := map[string]string{} // "" before, "rolling", "done"
		var c counts
		for ev := range w.ResultChan() {
			d, ok := ev.Object.(*appsv1.Deployment)
			if !ok || d.Generation == gen[d.Name] || state[d.Name] == "done" {
				continue
			}
			if state[d.Name] == "" {
				state[d.Name] = "rolling"
				c.inFlight++
				c.maxInFlight = max(c.maxInFlight, c.inFlight)
			}
			if _, done, _ := rollout.Status(d); done {
				state[d.Name] = "done"
				c.inFlight--
				c.done++
			}
			seen <- c
		}
	}()

	r := cl.job(injectArgs("app in (w1,w2,w3,w4)", "db-creds", "--max-parallel", "2")...)
	if r.code != 0 {
		t.Fatalf("inject: exit %d (%v)\n%s", r.code, r.err, r.logs)
	}
	var c counts
	for c.done < len(names) {
		select {
		case c = <-seen:
		case <-time.After(30 * time.Second):
			t.Fatalf("watch saw %d of %d rollouts finish", c.done, len(names))
		}
	}
	if c.maxInFlight != 2 {
		t.Errorf("at most %d deployments rolled out at once; want 2 (--max-parallel 2)", c.maxInFlight)
	}
	for _, n := range names {
		d := cl.waitDeployment(n)
		if v := d.Spec.Template.Spec.Volumes; volumeNames(v) != restartInjection || v[0].Secret == nil || v[0].Secret.SecretName != "db-creds" {
			t.Errorf("deployment %s volumes = %+v; want the db-creds secret volume and the agent's turn file", n, v)
		}
	}
}

// With --max-parallel 2, two rollouts that fail together are each rolled
// back, and the workloads after them are not touched.
func TestAPIMaxParallelFailure(t *testing.T) {
	cl := newCluster(t, func(p *corev1.Pod) bool {
		return hasInjectedVolume(p) && (p.Labels["app"] == "w1" || p.Labels["app"] == "w2")
	})
	cl.secret("db-creds")
	orig := map[string]*appsv1.Deployment{}
	for _, n := range []string{"w1", "w2", "w3", "w4"} {
		orig[n] = cl.deployment(n, n, 2)
	}
	r := cl.job(injectArgs("app in (w1,w2,w3,w4)", "db-creds", "--max-parallel", "2", "--timeout", "8s")...)
	if r.code != 5 {
		t.Fatalf("inject: exit %d (%v); want 5", r.code, r.err)
	}
	for _, n := range []string{"w1", "w2"} {
		d := cl.waitDeployment(n)
		if !equality.Semantic.DeepEqual(d.Spec.Template, orig[n].Spec.Template) {
			t.Errorf("%s: after rollback the template is\n%+v\nwant\n%+v", n, d.Spec.Template, orig[n].Spec.Template)
		}
		if !strings.Contains(errString(r.err), "Deployment "+cl.ns+"/"+n) {
			t.Errorf("error does not name %s: %v", n, r.err)
		}
	}
	for _, n := range []string{"w3", "w4"} {
		d, err := cl.c.AppsV1().Deployments(cl.ns).Get(cl.ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d.Generation != orig[n].Generation || d.ResourceVersion != orig[n].ResourceVersion {
			t.Errorf("%s changed (generation %d -> %d); want it not reached", n, orig[n].Generation, d.Generation)
		}
	}
	failed := cl.events("RolloutFailed")
	sort.Strings(failed)
	if strings.Join(failed, ",") != "Deployment/w1,Deployment/w2" {
		t.Errorf("RolloutFailed events on %v; want w1 and w2", failed)
	}
	want := map[string]string{"w1": "rolled back", "w2": "rolled back", "w3": "not reached", "w4": "not reached"}
	for _, line := range strings.Split(r.out, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && want[f[2]] != "" && strings.Contains(line, want[f[2]]) {
			delete(want, f[2])
		}
	}
	if len(want) > 0 {
		t.Errorf("report lacks %v:\n%s", want, r.out)
	}
}
