//go:build e2e

package job

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/k8secrets/k8secrets/internal/apitest"
)

// A rollout whose new pods never become Ready (the agent's image does not
// exist) is rolled back: exit 5, the pod template is exactly the one before,
// and the Deployment's pods are the old ones, Ready, none of the failed
// revision left.
func TestFailedRolloutRollsBack(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	orig := s.deployment(ctx, t, ns, "web", "web", 2)
	before := s.livePods(ctx, t, ns, "app=web")

	r := s.job(ctx, t, "", ns, [][]byte{value}, "inject", "-l", "app=web", "--secret", "db-creds",
		"--agent-image", missingImage, "--timeout", "15s")
	if r.code != 5 {
		t.Fatalf("inject with an agent image that does not exist: %s\nwant exit 5", r)
	}
	s.webRolledBack(ctx, t, ns, orig, before)
	if n := s.replicaSetsWithSecret(ctx, t, ns, "db-creds"); n != 1 {
		t.Errorf("%d ReplicaSets of the failed revision; want 1, scaled to 0", n)
	}
}

// The same on a DaemonSet, whose controller replaces each node's pod
// (maxUnavailable 1): the pod of the failed revision never becomes Ready,
// the template is restored exactly, and every node runs a Ready pod of the
// old revision again.
func TestDaemonSetFailedRolloutRollsBack(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	orig := s.daemonSet(ctx, t, ns, "agent", "node-agent")
	nodes := int(orig.Status.DesiredNumberScheduled)
	rec := s.recordPods(ctx, t, ns, "app=node-agent")

	r := s.job(ctx, t, "", ns, [][]byte{value}, "inject", "-l", "app=node-agent", "--secret", "db-creds",
		"--agent-image", missingImage, "--timeout", "15s")
	if r.code != 5 {
		t.Fatalf("inject with an agent image that does not exist: %s\nwant exit 5", r)
	}
	ds, err := s.Client.AppsV1().DaemonSets(ns).Get(ctx, "agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(ds.Spec.Template, orig.Spec.Template) {
		t.Errorf("after the rollback daemonset/agent's template is\n%+v\nwant the one before\n%+v", ds.Spec.Template, orig.Spec.Template)
	}
	s.waitDaemonSet(ctx, t, ns, "agent")
	pods := s.settledPods(ctx, t, ns, "app=node-agent", nodes, "db-creds", false)
	rec.mu.Lock()
	bad := rec.injected
	rec.mu.Unlock()
	if len(bad) == 0 {
		t.Errorf("no pod of the failed revision was ever created: the test did not exercise a rollback")
	}
	for _, p := range pods {
		if _, ok := bad[p.UID]; ok {
			t.Errorf("pod %s of the failed revision is still there", p.Name)
		}
	}
}

// replicaSetsWithSecret counts the ReplicaSets whose template mounts
// secret; it fails the test if one of them still has replicas.
func (s *suite) replicaSetsWithSecret(ctx context.Context, t *testing.T, ns, secret string) int {
	t.Helper()
	l, err := s.Client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, rs := range l.Items {
		for _, v := range rs.Spec.Template.Spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == secret {
				n++
				if *rs.Spec.Replicas != 0 {
					t.Errorf("replicaset %s of the failed revision wants %d replicas; want 0", rs.Name, *rs.Spec.Replicas)
				}
			}
		}
	}
	return n
}

// A change the API server's admission refuses (a ValidatingAdmissionPolicy
// forbidding init containers in one of two matched Deployments) is caught by
// the server-side dry-run: exit 4, and neither Deployment, nor anything
// else, changed.
func TestDryRunRejectionChangesNothing(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.deployment(ctx, t, ns, "web", "web", 1)
	s.deployment(ctx, t, ns, "web2", "web", 1)

	msg := apitest.NoInitContainers(ctx, t, s.Client, ns, "web2")

	before := s.stableVersions(ctx, t, ns)
	r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=web", "db-creds", "--timeout", "60s")...)
	if r.code != 4 {
		t.Fatalf("inject: %s\nwant exit 4", r)
	}
	if !strings.Contains(r.stderr, msg) {
		t.Errorf("the error does not carry the policy's message:\n%s", r.stderr)
	}
	if after := s.versions(ctx, t, ns); after != before {
		t.Errorf("objects changed although the dry-run was refused:\nbefore %s\nafter  %s", before, after)
	}
	for _, p := range s.livePods(ctx, t, ns, "app=web") {
		if mountsSecret(&p, "db-creds") {
			t.Errorf("pod %s mounts the Secret although nothing was to change", p.Name)
		}
	}
}

// podEvent is a pod of a StatefulSet seen deleted, or seen Ready at a
// revision, at a time.
type podEvent struct {
	at       time.Time
	name     string
	uid      types.UID
	revision string
	deleted  bool
	ready    bool
	injected bool
}

// podRecorder watches the pods matching a selector and records, in order,
// each pod's deletion and the first time it is seen Ready.
type podRecorder struct {
	mu      sync.Mutex
	events  []podEvent
	ready   map[types.UID]bool // recorded Ready once
	deleted map[types.UID]bool // recorded deleted once
	// injected holds every pod seen with a Secret volume, by UID.
	injected map[types.UID]string
}

func (s *suite) recordPods(ctx context.Context, t *testing.T, ns, sel string) *podRecorder {
	t.Helper()
	w, err := s.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		t.Fatalf("watch pods %s in %s: %v", sel, ns, err)
	}
	rec := &podRecorder{ready: map[types.UID]bool{}, deleted: map[types.UID]bool{}, injected: map[types.UID]string{}}
	stopped := make(chan struct{})
	t.Cleanup(func() { w.Stop(); <-stopped })
	go func() {
		defer close(stopped)
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			e := podEvent{at: time.Now(), name: p.Name, uid: p.UID, revision: p.Labels[appsv1.ControllerRevisionHashLabelKey],
				deleted: ev.Type == watch.Deleted || p.DeletionTimestamp != nil, ready: podReady(p), injected: len(secretVolumes(p)) > 0}
			rec.mu.Lock()
			if e.injected {
				rec.injected[p.UID] = p.Name
			}
			switch {
			case e.deleted && !rec.deleted[p.UID]:
				rec.deleted[p.UID] = true
				rec.events = append(rec.events, e)
			case !e.deleted && e.ready && !rec.ready[p.UID]:
				rec.ready[p.UID] = true
				rec.events = append(rec.events, e)
			}
			rec.mu.Unlock()
		}
	}()
	return rec
}

func (r *podRecorder) snapshot() []podEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]podEvent(nil), r.events...)
}

// A StatefulSet with the OnDelete strategy, which its controller never
// updates by itself, is rolled by the Job pod by pod, highest ordinal
// first: each pod is deleted only once the one before it is back and Ready
// with the Secret.
func TestStatefulSetOnDeleteRolledPodByPod(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	s.statefulSet(ctx, t, ns, "db", "db", 3, appsv1.OnDeleteStatefulSetStrategyType)
	rec := s.recordPods(ctx, t, ns, "app=db")

	r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs("app=db", "db-creds", "--timeout", "2m")...)
	if r.code != 0 {
		t.Fatalf("inject: %s", r)
	}
	pods := s.settledPods(ctx, t, ns, "app=db", 3, "db-creds", true)
	s.checkSecretFile(ctx, t, pods, "db-creds", value)
	sts := s.waitStatefulSet(ctx, t, ns, "db")
	for _, p := range pods {
		if rev := p.Labels[appsv1.ControllerRevisionHashLabelKey]; rev != sts.Status.UpdateRevision {
			t.Errorf("pod %s at revision %s; want the update revision %s", p.Name, rev, sts.Status.UpdateRevision)
		}
	}

	// The order of deletions and readiness, as the API server told it.
	var order []string
	var log strings.Builder
	for _, e := range rec.snapshot() {
		switch {
		case e.deleted:
			order = append(order, "delete "+e.name)
			fmt.Fprintf(&log, "  %s deleted %s (injected %t)\n", e.at.Format("15:04:05.000"), e.name, e.injected)
		case e.injected:
			order = append(order, "ready "+e.name)
			fmt.Fprintf(&log, "  %s ready %s with the Secret\n", e.at.Format("15:04:05.000"), e.name)
		}
	}
	want := "delete db-2, ready db-2, delete db-1, ready db-1, delete db-0, ready db-0"
	if got := strings.Join(order, ", "); got != want {
		t.Errorf("pods were replaced in the order\n  %s\nwant\n  %s\nevents:\n%s", got, want, log.String())
	}
}

// A StatefulSet whose new revision never becomes Ready (the agent's image
// does not exist) is rolled back: exit 5, the template restored exactly,
// the stuck pod of the bad revision replaced by one of the old revision, and
// every pod Ready again.
func TestStatefulSetBadRevisionRolledBack(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	orig := s.statefulSet(ctx, t, ns, "db", "db", 3, appsv1.RollingUpdateStatefulSetStrategyType)
	rec := s.recordPods(ctx, t, ns, "app=db")

	r := s.job(ctx, t, "", ns, [][]byte{value}, "inject", "-l", "app=db", "--secret", "db-creds",
		"--agent-image", missingImage, "--timeout", "15s")
	if r.code != 5 {
		t.Fatalf("inject with an agent image that does not exist: %s\nwant exit 5", r)
	}
	sts, err := s.Client.AppsV1().StatefulSets(ns).Get(ctx, "db", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(sts.Spec.Template, orig.Spec.Template) {
		t.Errorf("after the rollback statefulset/db's template is\n%+v\nwant the one before\n%+v", sts.Spec.Template, orig.Spec.Template)
	}
	sts = s.waitStatefulSet(ctx, t, ns, "db")
	pods := s.settledPods(ctx, t, ns, "app=db", 3, "db-creds", false)
	for _, p := range pods {
		if rev := p.Labels[appsv1.ControllerRevisionHashLabelKey]; rev != orig.Status.UpdateRevision {
			t.Errorf("pod %s at revision %s; want the original revision %s", p.Name, rev, orig.Status.UpdateRevision)
		}
	}
	if sts.Status.UpdateRevision != orig.Status.UpdateRevision {
		t.Errorf("update revision %s; want the original %s", sts.Status.UpdateRevision, orig.Status.UpdateRevision)
	}
	// The rollout did create a pod of the bad revision, and it is gone.
	rec.mu.Lock()
	bad := rec.injected
	rec.mu.Unlock()
	if len(bad) == 0 {
		t.Errorf("no pod of the bad revision was ever created: the test did not exercise a rollback")
	}
	for _, p := range pods {
		if name, ok := bad[p.UID]; ok {
			t.Errorf("pod %s of the bad revision is still there", name)
		}
	}
}
