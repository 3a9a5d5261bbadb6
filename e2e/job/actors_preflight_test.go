//go:build e2e

package job

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
)

// refusedBeforeAnyWrite runs inject on app=app and wants exit 4 naming
// what, with no object's resourceVersion moved.
func (s *suite) refusedBeforeAnyWrite(ctx context.Context, t *testing.T, ns string, value []byte, app, what string) {
	t.Helper()
	before := s.stableVersions(ctx, t, ns)
	r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app="+app, "db-creds")...)
	if r.code != 4 || !strings.Contains(r.stderr, what) {
		t.Fatalf("inject: %s\nwant exit 4 naming %q", r, what)
	}
	if after := s.versions(ctx, t, ns); after != before {
		t.Errorf("objects changed although the Job refused before any write:\nbefore %s\nafter  %s", before, after)
	}
}

// A paused Deployment would never roll: refused before any write.
func TestPreflightPausedDeploymentRefused(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.deployment(ctx, t, ns, "web", "web", 1)
	if _, err := s.Client.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"paused":true}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	s.refusedBeforeAnyWrite(ctx, t, ns, value, "web", "kubectl rollout resume")
}

// A StatefulSet whose partition is at or above its replicas would take the
// change in no pod: refused before any write.
func TestPreflightPartitionedStatefulSetRefused(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.statefulSet(ctx, t, ns, "db", "db", 2, appsv1.RollingUpdateStatefulSetStrategyType)
	patch := `{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}}}}`
	if _, err := s.Client.AppsV1().StatefulSets(ns).Patch(ctx, "db", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	s.waitStatefulSet(ctx, t, ns, "db")
	s.refusedBeforeAnyWrite(ctx, t, ns, value, "db", "partition")
}

// A Deployment with a controller ownerReference (an operator's, which would
// revert its template) is skipped, the owner named; the run succeeds and the
// Deployment is untouched.
func TestPreflightOwnedDeploymentSkipped(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	owner, err := s.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "operator-app"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.deployment(ctx, t, ns, "web", "web", 1, func(d *appsv1.Deployment) {
		d.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID, Controller: ptrTo(true)}}
	})
	before := s.stableVersions(ctx, t, ns)
	r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=web", "db-creds")...)
	if r.code != 0 || !strings.Contains(r.stdout+r.stderr, "owned by ConfigMap operator-app") {
		t.Fatalf("inject into an owned Deployment: %s\nwant exit 0 naming the owner", r)
	}
	if after := s.versions(ctx, t, ns); after != before {
		t.Errorf("objects changed although the Deployment is owned by another controller:\nbefore %s\nafter  %s", before, after)
	}
}

// readyGate is the readiness gate of the PDB test's pods: a pod is Ready
// only once the test's gate keeper sets this condition on it.
const readyGate = "k8secrets.io/e2e-ready"

// gateKeeper sets readyGate True on every pod of app=app but those held,
// until ctx ends: a stand-in for an app that is ready, or not.
type gateKeeper struct {
	mu   sync.Mutex
	held map[string]bool
}

func (g *gateKeeper) hold(names ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = map[string]bool{}
	for _, n := range names {
		g.held[n] = true
	}
}

func (g *gateKeeper) run(ctx context.Context, s *suite, ns, app string) {
	patch := []byte(`{"status":{"conditions":[{"type":"` + readyGate + `","status":"True"}]}}`)
	for ctx.Err() == nil {
		pods, _ := s.Pods(ctx, ns, "app="+app)
		for _, p := range pods {
			g.mu.Lock()
			held := g.held[p.Name]
			g.mu.Unlock()
			set := false
			for _, c := range p.Status.Conditions {
				set = set || (c.Type == readyGate && c.Status == corev1.ConditionTrue)
			}
			if !held && !set {
				_, _ = s.Client.CoreV1().Pods(ns).Patch(ctx, p.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// readyCount is the number of pods of app=app that are Ready and not being
// deleted.
func (s *suite) readyCount(ctx context.Context, ns, app string) (int, error) {
	pods, err := s.Pods(ctx, ns, "app="+app)
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range pods {
		if pods[i].DeletionTimestamp == nil && podReady(&pods[i]) {
			n++
		}
	}
	return n, nil
}

// An OnDelete StatefulSet of 3 under a PodDisruptionBudget of minAvailable
// 2: with one pod unready the Job refuses before any write (it never takes
// a pod down while another is unready); with all Ready it rolls the pods
// itself, through evictions, and a watch of the pods never sees fewer than
// 2 Ready.
func TestPreflightOnDeleteStatefulSetPDB(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 6*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	keeper := &gateKeeper{}
	keeper.hold("db-2")
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	go keeper.run(kctx, s, ns, "db")

	tmpl := podTemplate("db")
	tmpl.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: readyGate}}
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec: appsv1.StatefulSetSpec{Replicas: ptrTo(int32(3)), Selector: selector("db"), Template: tmpl, ServiceName: "db",
			PodManagementPolicy: appsv1.ParallelPodManagement,
			UpdateStrategy:      appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}}}
	if _, err := s.Client.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	minAvailable := intstr.FromInt32(2)
	if _, err := s.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec: policyv1.PodDisruptionBudgetSpec{MinAvailable: &minAvailable, Selector: selector("db")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitReady := func(want int) {
		t.Helper()
		err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			n, err := s.readyCount(ctx, ns, "db")
			return err == nil && n == want && len(s.livePods(ctx, t, ns, "app=db")) == 3, nil
		})
		if err != nil {
			t.Fatalf("want %d of 3 db pods Ready: %v\n%s", want, err, s.podStates(ns, "app=db"))
		}
	}
	waitReady(2)

	// One pod unready: refused before any write.
	s.refusedBeforeAnyWrite(ctx, t, ns, value, "db", "2 of 3 pods Ready")

	// All Ready: rolled pod by pod, the budget held throughout.
	keeper.hold()
	waitReady(3)
	least := 3
	wctx, endWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for wctx.Err() == nil {
			if n, err := s.readyCount(wctx, ns, "db"); err == nil && n < least {
				least = n
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=db", "db-creds")...)
	endWatch()
	<-watched
	if r.code != 0 {
		t.Fatalf("inject with every pod Ready: %s\nwant exit 0", r)
	}
	if least < 2 {
		t.Errorf("%d db pods were Ready at one point during the rollout; the budget's minAvailable is 2", least)
	}
	t.Logf("during the rollout, at least %d of 3 db pods were Ready", least)
	pods := s.livePods(ctx, t, ns, "app=db")
	for i := range pods {
		if !podReady(&pods[i]) || !mountsSecret(&pods[i], "db-creds") {
			t.Errorf("pod %s: ready %v, mounts the secret %v; want both", pods[i].Name, podReady(&pods[i]), mountsSecret(&pods[i], "db-creds"))
		}
	}
	s.checkSecretFile(ctx, t, pods, "db-creds", value)
}

// A namespace that enforces Pod Security "restricted" after the app was
// admitted (its pods run; new ones would be refused: the test app sets no
// seccomp profile): the pod dry-run refuses the change before any write.
func TestPreflightPodSecurityRefused(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.deployment(ctx, t, ns, "web", "web", 1)
	patch := []byte(`{"metadata":{"labels":{"pod-security.kubernetes.io/enforce":"restricted"}}}`)
	if _, err := s.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	s.refusedBeforeAnyWrite(ctx, t, ns, value, "web", "PodSecurity")
}
