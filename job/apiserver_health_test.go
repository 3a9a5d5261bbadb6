package main

// "Rolled out" only when pods carry it, and fail fast with the cause: each
// case against a real kube-apiserver and kube-controller-manager (quota,
// Pod Security admission, the disruption controller, the Eviction API).

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/k8secrets/k8secrets/internal/apitest"
)

// quota creates a ResourceQuota of pods pods and waits until the quota
// controller has computed its usage (before that, admission refuses every
// pod with "status unknown for quota").
func (cl *cluster) quota(pods int64) {
	cl.t.Helper()
	q := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "pods"},
		Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourcePods: *resource.NewQuantity(pods, resource.DecimalSI)}}}
	if _, err := cl.c.CoreV1().ResourceQuotas(cl.ns).Create(cl.ctx, q, metav1.CreateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(cl.ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		q, err := cl.c.CoreV1().ResourceQuotas(cl.ns).Get(ctx, "pods", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		_, ok := q.Status.Used[corev1.ResourcePods]
		return ok, nil
	})
	if err != nil {
		cl.t.Fatalf("quota usage never computed: %v", err)
	}
}

// A quota that leaves no room for the surge pod: the pod dry-run refuses
// the change before any write (exit 4, quoting the quota), nothing moved.
func TestAPIQuotaRefusedByPodDryRun(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	cl.quota(2)
	before := cl.versions()
	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 4 || !strings.Contains(errString(r.err), "exceeded quota") {
		t.Fatalf("inject: exit %d (%v); want 4 quoting the quota", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed although the pod dry-run refused:\nbefore %s\nafter  %s", before, after)
	}
}

// applyHook is a transport that runs hook once, just before the first
// write (not a dry-run) to the workloads, and records when.
type applyHook struct {
	next http.RoundTripper
	once sync.Once
	hook func()
	at   atomic.Pointer[time.Time]
}

func (h *applyHook) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPatch && strings.Contains(req.URL.Path, "/deployments/") && !strings.Contains(req.URL.RawQuery, "dryRun") {
		h.once.Do(func() {
			h.hook()
			now := time.Now()
			h.at.Store(&now)
		})
	}
	return h.next.RoundTrip(req)
}

// The quota arrives after the dry-run, just before the apply: the new
// ReplicaSet cannot create its surge pod, the Deployment says so in
// ReplicaFailure, and the Job fails and rolls back within seconds, quoting
// it, not after --timeout (60 s here).
func TestAPIQuotaAfterDryRunFailsFast(t *testing.T) {
	cl := newCluster(t, never)
	env := apitest.Shared(t)
	cl.secret("db-creds")
	orig := cl.deployment("web", "web", 2)
	cfg := rest.CopyConfig(env.Config)
	h := &applyHook{hook: func() { cl.quota(2) }}
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { h.next = rt; return h }
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := cl.jobAs(cl.ctx, client, injectArgs("app=web", "db-creds", "--timeout", "60s")...)
	end := time.Now()
	if r.code != 5 || !strings.Contains(errString(r.err), "exceeded quota") || !strings.Contains(errString(r.err), "ReplicaFailure") {
		t.Fatalf("inject: exit %d (%v); want 5 quoting the ReplicaFailure condition's quota message", r.code, r.err)
	}
	at := h.at.Load()
	if at == nil {
		t.Fatal("the apply never went through the hook")
	}
	took := end.Sub(*at)
	t.Logf("failed and rolled back %.1f s after the apply (--timeout 60s): %v", took.Seconds(), r.err)
	if took > 15*time.Second {
		t.Errorf("failed and rolled back %s after the apply; want within 15 s", took)
	}
	d := cl.waitDeployment("web")
	if !equality.Semantic.DeepEqual(d.Spec.Template, orig.Spec.Template) {
		t.Errorf("after the rollback the template differs from the original")
	}
}

// restricted labels the namespace enforce=restricted (existing pods stay).
func (cl *cluster) restricted() {
	cl.t.Helper()
	ns, err := cl.c.CoreV1().Namespaces().Get(cl.ctx, cl.ns, metav1.GetOptions{})
	if err != nil {
		cl.t.Fatal(err)
	}
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	ns.Labels["pod-security.kubernetes.io/enforce"] = "restricted"
	ns.Labels["pod-security.kubernetes.io/enforce-version"] = "latest"
	if _, err := cl.c.CoreV1().Namespaces().Update(cl.ctx, ns, metav1.UpdateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
}

// An app that Pod Security "restricted" would refuse: the injection is
// refused before any write (exit 4, quoting Pod Security), nothing moved.
// The Deployment alone passes admission (Pod Security enforces on pods
// only), so only the pod dry-run can see it.
func TestAPIPodSecurityRefused(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	cl.restricted()
	before := cl.versions()
	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 4 || !strings.Contains(errString(r.err), "PodSecurity") {
		t.Fatalf("inject: exit %d (%v); want 4 quoting Pod Security", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed although Pod Security refused:\nbefore %s\nafter  %s", before, after)
	}
}

// In a namespace that enforces "restricted", a compliant app is injected:
// the agent complies too, and the new pods are admitted for real.
func TestAPIPodSecurityRestrictedInjects(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.restricted()
	tmpl := podTemplate("web")
	tmpl.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	tmpl.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: ptr.To(int64(1000)), AllowPrivilegeEscalation: ptr.To(false),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(2)),
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, Template: tmpl}}
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Create(cl.ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cl.waitDeployment("web")
	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 0 {
		t.Fatalf("inject: exit %d (%v)\n%s", r.code, r.err, r.logs)
	}
	d = cl.waitDeployment("web")
	n := 0
	for _, p := range cl.pods("web") {
		if p.DeletionTimestamp == nil && hasInjectedVolume(&p) && podReady(&p) {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d Ready injected pods admitted under enforce=restricted; want 2", n)
	}
}

// A paused Deployment would never roll: refused up front, nothing moved.
func TestAPIPausedDeploymentRefused(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	d, _ := cl.c.AppsV1().Deployments(cl.ns).Get(cl.ctx, "web", metav1.GetOptions{})
	d.Spec.Paused = true
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Update(cl.ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cl.waitDeployment("web")
	before := cl.versions()
	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 4 || !strings.Contains(errString(r.err), "is paused") || !strings.Contains(errString(r.err), "kubectl rollout resume") {
		t.Fatalf("inject: exit %d (%v); want 4 saying it is paused and how to resume", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed although refused:\nbefore %s\nafter  %s", before, after)
	}
}

// A StatefulSet partition at its replicas would update no pod: refused. A
// partition below: rolled out to the pods it lets through, and the report
// says which; the others are left as they were.
func TestAPIPartitionedStatefulSet(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.statefulSet("db", "db", 3, appsv1.RollingUpdateStatefulSetStrategyType)
	setPartition := func(p int32) {
		s, _ := cl.c.AppsV1().StatefulSets(cl.ns).Get(cl.ctx, "db", metav1.GetOptions{})
		s.Spec.UpdateStrategy.RollingUpdate = &appsv1.RollingUpdateStatefulSetStrategy{Partition: ptr.To(p)}
		if _, err := cl.c.AppsV1().StatefulSets(cl.ns).Update(cl.ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		_ = wait.PollUntilContextTimeout(cl.ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			s, err := cl.c.AppsV1().StatefulSets(cl.ns).Get(ctx, "db", metav1.GetOptions{})
			return err == nil && s.Status.ObservedGeneration == s.Generation, nil
		})
	}
	setPartition(3)
	s0, _ := cl.c.AppsV1().StatefulSets(cl.ns).Get(cl.ctx, "db", metav1.GetOptions{})
	r := cl.job(injectArgs("app=db", "db-creds")...)
	if r.code != 4 || !strings.Contains(errString(r.err), "partition 3 with 3 replicas") {
		t.Fatalf("inject, partition 3 of 3: exit %d (%v); want 4 naming the partition", r.code, r.err)
	}
	if s, _ := cl.c.AppsV1().StatefulSets(cl.ns).Get(cl.ctx, "db", metav1.GetOptions{}); s.ResourceVersion != s0.ResourceVersion {
		t.Errorf("statefulset changed although refused")
	}

	setPartition(1)
	r = cl.job(injectArgs("app=db", "db-creds")...)
	if r.code != 0 || !strings.Contains(r.out, "partition 1: only the 2 pods with ordinal 1 or more take the change") {
		t.Fatalf("inject, partition 1 of 3: exit %d (%v); want 0 and the partition in the report:\n%s", r.code, r.err, r.out)
	}
	for _, p := range cl.pods("db") {
		if want := p.Name != "db-0"; hasInjectedVolume(&p) != want || !podReady(&p) {
			t.Errorf("pod %s: injected %v, ready %v; want injected %v (partition 1) and ready", p.Name, hasInjectedVolume(&p), podReady(&p), want)
		}
	}
}

// A Deployment owned by another controller (an operator, which would
// revert the template) is skipped with its owner named, untouched; the
// run goes on with the others.
func TestAPIOwnedDeploymentSkipped(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	owner, err := cl.c.CoreV1().ConfigMaps(cl.ns).Create(cl.ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "shop-operator-app"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "owned",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID, Controller: ptr.To(true)}}},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(1)), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "owned"}},
			Template: podTemplate("owned")}}
	d.Spec.Template.Labels["tier"] = "web"
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Create(cl.ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	owned := cl.waitDeployment("owned")
	cl.deployment("web", "web", 1)
	r := cl.job(injectArgs("app in (web,owned)", "db-creds")...)
	if r.code != 0 || !strings.Contains(r.out, "owned by ConfigMap shop-operator-app (v1)") || !strings.Contains(r.out, "skipped") {
		t.Fatalf("inject: exit %d (%v); want 0 with the owned Deployment skipped, its owner named:\n%s", r.code, r.err, r.out)
	}
	if got, _ := cl.c.AppsV1().Deployments(cl.ns).Get(cl.ctx, "owned", metav1.GetOptions{}); got.ResourceVersion != owned.ResourceVersion {
		t.Errorf("the owned deployment was written (resourceVersion %s -> %s)", owned.ResourceVersion, got.ResourceVersion)
	}
	if web := cl.waitDeployment("web"); volumeNames(web.Spec.Template.Spec.Volumes) != restartInjection {
		t.Errorf("the unowned deployment was not injected")
	}
}

// pdb creates a PodDisruptionBudget over app=app and waits until the
// disruption controller has computed it (evictions need its status).
func (cl *cluster) pdb(app string, minAvailable int) {
	cl.t.Helper()
	p := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: app},
		Spec: policyv1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(int32(minAvailable))),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}}}
	if _, err := cl.c.PolicyV1().PodDisruptionBudgets(cl.ns).Create(cl.ctx, p, metav1.CreateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(cl.ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := cl.c.PolicyV1().PodDisruptionBudgets(cl.ns).Get(ctx, app, metav1.GetOptions{})
		return err == nil && p.Status.ObservedGeneration == p.Generation && p.Status.ExpectedPods > 0, nil
	})
	if err != nil {
		cl.t.Fatalf("pdb %s never computed: %v", app, err)
	}
}

// watchAvailable follows the pods of app and records the fewest that were
// Ready and not being deleted at any moment, until stop is called.
func (cl *cluster) watchAvailable(app string) (fewest func() int, stop func()) {
	cl.t.Helper()
	ctx, cancel := context.WithCancel(cl.ctx)
	l, err := cl.c.CoreV1().Pods(cl.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		cl.t.Fatal(err)
	}
	state := map[types.UID]bool{}
	for i := range l.Items {
		state[l.Items[i].UID] = l.Items[i].DeletionTimestamp == nil && podReady(&l.Items[i])
	}
	w, err := cl.c.CoreV1().Pods(cl.ns).Watch(ctx, metav1.ListOptions{LabelSelector: "app=" + app, ResourceVersion: l.ResourceVersion})
	if err != nil {
		cl.t.Fatal(err)
	}
	var mu sync.Mutex
	min := 1 << 30
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			mu.Lock()
			state[p.UID] = ev.Type != watch.Deleted && p.DeletionTimestamp == nil && podReady(p)
			n := 0
			for _, up := range state {
				if up {
					n++
				}
			}
			if n < min && len(state) > 0 {
				min = n
			}
			mu.Unlock()
		}
	}()
	return func() int { mu.Lock(); defer mu.Unlock(); return min }, func() { cancel(); w.Stop(); <-done }
}

// OnDelete StatefulSet under a PodDisruptionBudget: the Job's own pod
// replacements go through the Eviction API. With minAvailable = replicas-1
// it rolls every pod and the budget is never broken; with a pod unready it
// refuses before any write; with minAvailable = replicas no eviction is
// allowed, so no pod is removed and the rollout fails at --timeout.
func TestAPIOnDeleteStatefulSetPDB(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.statefulSet("db", "db", 3, appsv1.OnDeleteStatefulSetStrategyType)
	cl.pdb("db", 2)

	// One pod unready (someone else's problem): refused, nothing moved.
	p0, _ := cl.c.CoreV1().Pods(cl.ns).Get(cl.ctx, "db-0", metav1.GetOptions{})
	setReady := func(p *corev1.Pod, s corev1.ConditionStatus) {
		for i := range p.Status.Conditions {
			if p.Status.Conditions[i].Type == corev1.PodReady || p.Status.Conditions[i].Type == corev1.ContainersReady {
				p.Status.Conditions[i].Status = s
			}
		}
		if _, err := cl.c.CoreV1().Pods(cl.ns).UpdateStatus(cl.ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setReady(p0, corev1.ConditionFalse)
	_ = wait.PollUntilContextTimeout(cl.ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		s, err := cl.c.AppsV1().StatefulSets(cl.ns).Get(ctx, "db", metav1.GetOptions{})
		return err == nil && s.Status.ReadyReplicas == 2, nil
	})
	before := cl.versions()
	r := cl.job(injectArgs("app=db", "db-creds")...)
	if r.code != 4 || !strings.Contains(errString(r.err), "2 of 3 pods Ready") {
		t.Fatalf("inject with db-0 unready: exit %d (%v); want 4", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed although refused:\nbefore %s\nafter  %s", before, after)
	}
	p0, _ = cl.c.CoreV1().Pods(cl.ns).Get(cl.ctx, "db-0", metav1.GetOptions{})
	setReady(p0, corev1.ConditionTrue)
	_ = wait.PollUntilContextTimeout(cl.ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := cl.c.PolicyV1().PodDisruptionBudgets(cl.ns).Get(ctx, "db", metav1.GetOptions{})
		return err == nil && p.Status.DisruptionsAllowed == 1, nil
	})

	// All Ready: rolled through evictions, never below minAvailable.
	fewest, stop := cl.watchAvailable("db")
	r = cl.job(injectArgs("app=db", "db-creds")...)
	stop()
	if r.code != 0 {
		t.Fatalf("inject: exit %d (%v)\n%s", r.code, r.err, r.logs)
	}
	if n := fewest(); n < 2 {
		t.Errorf("at one moment only %d pods were Ready; the budget says at least 2", n)
	}
	for _, p := range cl.pods("db") {
		if !hasInjectedVolume(&p) || !podReady(&p) {
			t.Errorf("pod %s: injected %v, ready %v; want both", p.Name, hasInjectedVolume(&p), podReady(&p))
		}
	}
}

// With minAvailable = replicas the budget allows no eviction: the Job
// removes no pod, and its rollout fails at --timeout and is rolled back.
func TestAPIOnDeleteStatefulSetPDBHolds(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	orig := cl.statefulSet("db", "db", 3, appsv1.OnDeleteStatefulSetStrategyType)
	cl.pdb("db", 3)
	uids := map[string]types.UID{}
	for _, p := range cl.pods("db") {
		uids[p.Name] = p.UID
	}
	r := cl.job(injectArgs("app=db", "db-creds", "--timeout", "8s")...)
	if r.code != 5 || !strings.Contains(errString(r.err), "PodDisruptionBudget") {
		t.Fatalf("inject: exit %d (%v); want 5 naming the PodDisruptionBudget", r.code, r.err)
	}
	for _, p := range cl.pods("db") {
		if uids[p.Name] != p.UID || p.DeletionTimestamp != nil {
			t.Errorf("pod %s was removed although the budget allowed no disruption", p.Name)
		}
	}
	s, _ := cl.c.AppsV1().StatefulSets(cl.ns).Get(cl.ctx, "db", metav1.GetOptions{})
	if !equality.Semantic.DeepEqual(s.Spec.Template, orig.Spec.Template) {
		t.Errorf("after the rollback the template differs from the original")
	}
}

// The pod dry-run needs "create" on pods (a dry-run needs the verb of the
// real write): without it the Job stops before any write, exit 1, naming
// the verb, not exit 4 as if the change were wrong.
func TestAPIPodDryRunNeedsCreate(t *testing.T) {
	cl := newCluster(t, never)
	env := apitest.Shared(t)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	asJob := cl.bindRole(env, "../manifests/base/role.yaml", "k8secrets-job", func(r *rbacv1.Role) {
		r.Rules[0].ResourceNames = []string{"db-creds"}
		for i := range r.Rules {
			if len(r.Rules[i].Resources) == 1 && r.Rules[i].Resources[0] == "pods" {
				var verbs []string
				for _, v := range r.Rules[i].Verbs {
					if v != "create" {
						verbs = append(verbs, v)
					}
				}
				r.Rules[i].Verbs = verbs
			}
		}
	}, func(ctx context.Context, c kubernetes.Interface) error {
		_, err := c.CoreV1().Secrets(cl.ns).Get(ctx, "db-creds", metav1.GetOptions{})
		return err
	})
	before := cl.versions()
	r := cl.jobAs(cl.ctx, asJob, injectArgs("app=web", "db-creds")...)
	if r.code != 1 || !strings.Contains(errString(r.err), `grant verb "create" on pods`) {
		t.Fatalf("inject without pods create: exit %d (%v); want 1 naming the verb", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed:\nbefore %s\nafter  %s", before, after)
	}
}

// A rollback to an existing ReplicaSet can leave the ProgressDeadlineExceeded
// of the failed rollout in place until the controller sees progress (here:
// Recreate, one replica, so the rollback's first sync shows none). That
// stale condition is not a failed rollback: the Job waits for the old pods
// and exits 5 (rolled back), not 6.
func TestAPIStaleDeadlineAfterRollback(t *testing.T) {
	cl := newCluster(t, hasInjectedVolume)
	cl.secret("db-creds")
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(1)),
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, Template: podTemplate("web"),
		Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}, ProgressDeadlineSeconds: ptr.To(int32(2))}}
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Create(cl.ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	orig := cl.waitDeployment("web")
	r := cl.job(injectArgs("app=web", "db-creds", "--timeout", "30s")...)
	if r.code != 5 || !strings.Contains(errString(r.err), "exceeded its progress deadline") {
		t.Fatalf("inject: exit %d (%v); want 5: failed on the deadline, rolled back", r.code, r.err)
	}
	got := cl.waitDeployment("web")
	if !equality.Semantic.DeepEqual(got.Spec.Template, orig.Spec.Template) {
		t.Errorf("after the rollback the template differs from the original")
	}
}

// An operator (another writer, here an Update of the whole template) puts
// the template back while the Job waits: the Deployment then rolls out,
// but not the injection. The Job judges the generation that carries its
// hash: a failure naming the other writer, never "injected".
func TestAPIRevertedDuringWaitIsNotInjected(t *testing.T) {
	cl := newCluster(t, hasInjectedVolume)
	cl.secret("db-creds")
	orig := cl.deployment("web", "web", 2)
	go func() {
		_ = wait.PollUntilContextTimeout(cl.ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			return cl.replicaSets() >= 2, nil
		})
		_ = wait.PollUntilContextTimeout(cl.ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			d, err := cl.c.AppsV1().Deployments(cl.ns).Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			d.Spec.Template = *orig.Spec.Template.DeepCopy()
			_, err = cl.c.AppsV1().Deployments(cl.ns).Update(ctx, d, metav1.UpdateOptions{FieldManager: "operator"})
			return err == nil, nil
		})
	}()
	r := cl.job(injectArgs("app=web", "db-creds", "--timeout", "30s")...)
	if r.code == 0 || !strings.Contains(errString(r.err), "no longer carries k8secrets.io/hash-db-creds") {
		t.Fatalf("inject reverted by another writer: exit %d (%v); want a failure saying the template no longer carries the hash:\n%s", r.code, r.err, r.out)
	}
	if ev := cl.events("Injected"); len(ev) != 0 {
		t.Errorf("Injected events %v although the injection was reverted", ev)
	}
}

// The shipped Role is enough for the Job's own pod replacements (an OnDelete
// StatefulSet: evictions) and the pod dry-run, and both rules are needed:
// without pods/eviction the roll stops, naming the missing verb, with no
// pod removed.
func TestAPIShippedRoleEvicts(t *testing.T) {
	env := apitest.Shared(t)
	for _, tc := range []struct {
		name     string
		evict    bool
		code     int
		contains string
	}{
		{"shipped role", true, 0, ""},
		{"without pods/eviction", false, 5, `grant verb "create" on pods/eviction`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := newCluster(t, never)
			cl.secret("db-creds")
			cl.statefulSet("db", "db", 2, appsv1.OnDeleteStatefulSetStrategyType)
			uids := map[string]types.UID{}
			for _, p := range cl.pods("db") {
				uids[p.Name] = p.UID
			}
			asJob := cl.bindRole(env, "../manifests/base/role.yaml", "k8secrets-job", func(r *rbacv1.Role) {
				r.Rules[0].ResourceNames = []string{"db-creds"}
				if !tc.evict {
					var rules []rbacv1.PolicyRule
					for _, rule := range r.Rules {
						if len(rule.Resources) != 1 || rule.Resources[0] != "pods/eviction" {
							rules = append(rules, rule)
						}
					}
					r.Rules = rules
				}
			}, func(ctx context.Context, c kubernetes.Interface) error {
				_, err := c.CoreV1().Secrets(cl.ns).Get(ctx, "db-creds", metav1.GetOptions{})
				return err
			})
			r := cl.jobAs(cl.ctx, asJob, injectArgs("app=db", "db-creds", "--timeout", "10s")...)
			if r.code != tc.code || !strings.Contains(errString(r.err), tc.contains) {
				t.Fatalf("inject into an OnDelete StatefulSet: exit %d (%v); want %d naming %q\n%s", r.code, r.err, tc.code, tc.contains, r.logs)
			}
			for _, p := range cl.pods("db") {
				if replaced := uids[p.Name] != p.UID; replaced != tc.evict || hasInjectedVolume(&p) != tc.evict {
					t.Errorf("pod %s: replaced %v, injected %v; want %v", p.Name, replaced, hasInjectedVolume(&p), tc.evict)
				}
			}
		})
	}
}

// A pod-level admission policy (as a pod webhook or Kyverno/Gatekeeper rule
// would be) refuses pods with init containers: the workload's own dry-run
// passes, only the pod dry-run sees it; exit 4 quoting the policy, nothing
// moved.
func TestAPIPodPolicyRefused(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	name := "no-init-pods-" + cl.ns
	msg := "test policy: no init containers in pods"
	admission := cl.c.AdmissionregistrationV1()
	pol := &admissionregistrationv1.ValidatingAdmissionPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				}}}},
			Validations: []admissionregistrationv1.Validation{{Expression: "!has(object.spec.initContainers)", Message: msg}},
		}}
	if _, err := admission.ValidatingAdmissionPolicies().Create(cl.ctx, pol, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = admission.ValidatingAdmissionPolicies().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
			MatchResources: &admissionregistrationv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"kubernetes.io/metadata.name": cl.ns}}}}}
	if _, err := admission.ValidatingAdmissionPolicyBindings().Create(cl.ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = admission.ValidatingAdmissionPolicyBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	err := wait.PollUntilContextTimeout(cl.ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-"}, Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "i", Image: "x"}}, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		_, err := cl.c.CoreV1().Pods(cl.ns).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && strings.Contains(err.Error(), msg), nil
	})
	if err != nil {
		t.Fatalf("the pod policy never took effect: %v", err)
	}
	before := cl.versions()
	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 4 || !strings.Contains(errString(r.err), msg) || !strings.Contains(errString(r.err), "a pod of Deployment") {
		t.Fatalf("inject: exit %d (%v); want 4 quoting the pod policy", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed although the pod policy refused:\nbefore %s\nafter  %s", before, after)
	}
}

// A LimitRange whose container maximum the agent's limits exceed: refused
// by the pod dry-run (LimitRanger admits pods, not Deployments), exit 4.
func TestAPILimitRangeRefused(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	lr := &corev1.LimitRange{ObjectMeta: metav1.ObjectMeta{Name: "small"}, Spec: corev1.LimitRangeSpec{Limits: []corev1.LimitRangeItem{{
		Type: corev1.LimitTypeContainer, Max: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")}}}}}
	if _, err := cl.c.CoreV1().LimitRanges(cl.ns).Create(cl.ctx, lr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := cl.versions()
	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 4 || !strings.Contains(errString(r.err), "maximum memory usage per Container is 32Mi") {
		t.Fatalf("inject: exit %d (%v); want 4 quoting the LimitRange", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed although the LimitRange refused:\nbefore %s\nafter  %s", before, after)
	}
}

// A pod webhook that is down (failurePolicy Fail, nothing listening) is not
// a verdict on the change: exit 1 (retry), not 4, nothing moved.
func TestAPIPodWebhookDownIsRetryable(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	name := "down-" + cl.ns
	url := "https://127.0.0.1:1/validate"
	hook := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    "down.k8secrets.test",
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          ptr.To(int32(2)),
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": cl.ns}},
		}}}
	webhooks := cl.c.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	if _, err := webhooks.Create(cl.ctx, hook, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = webhooks.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	err := wait.PollUntilContextTimeout(cl.ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		_, err := cl.c.CoreV1().Pods(cl.ns).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && strings.Contains(err.Error(), "failed calling webhook"), nil
	})
	if err != nil {
		t.Fatalf("the webhook never took effect: %v", err)
	}
	before := cl.versions()
	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 1 || !strings.Contains(errString(r.err), "failed calling webhook") || !strings.Contains(errString(r.err), "retry") {
		t.Fatalf("inject with the pod webhook down: exit %d (%v); want 1, retryable", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed:\nbefore %s\nafter  %s", before, after)
	}
}
