package workload

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

func owned(kind, name string) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "apps/v1", Kind: kind, Name: name, UID: "uid-" + "name", Controller: ptr.To(true)}
}

func pod(name string, owner *metav1.OwnerReference) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: map[string]string{"app": "web"}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return p
}

func objects() []runtime.Object {
	meta := func(name string, owners ...metav1.OwnerReference) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: "shop", OwnerReferences: owners}
	}
	return []runtime.Object{
		&appsv1.Deployment{ObjectMeta: meta("web")},
		&appsv1.ReplicaSet{ObjectMeta: meta("web-1", owned("Deployment", "web"))},
		&appsv1.ReplicaSet{ObjectMeta: meta("web-2", owned("Deployment", "web"))},
		&appsv1.ReplicaSet{ObjectMeta: meta("orphan")},
		&appsv1.ReplicaSet{ObjectMeta: meta("argo-1", metav1.OwnerReference{APIVersion: "argoproj.io/v1alpha1", Kind: "Rollout", Name: "argo", Controller: ptr.To(true)})},
		&appsv1.ReplicaSet{ObjectMeta: meta("fake-1", metav1.OwnerReference{APIVersion: "example.com/v1", Kind: "Deployment", Name: "web", Controller: ptr.To(true)})},
		&appsv1.StatefulSet{ObjectMeta: meta("db")},
		&appsv1.DaemonSet{ObjectMeta: meta("logs")},
	}
}

func TestResolve(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := fake.NewClientset(objects()...)
	c := NewCache(client, "shop")
	if err := c.Start(ctx, ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); c.Shutdown() }()
	ref := func(kind, name string) *metav1.OwnerReference { o := owned(kind, name); return &o }
	pods := []corev1.Pod{
		pod("web-1-a", ref("ReplicaSet", "web-1")),
		pod("web-2-a", ref("ReplicaSet", "web-2")), // mid-rollout: two ReplicaSets, one Deployment
		pod("web-2-b", ref("ReplicaSet", "web-2")),
		pod("db-0", ref("StatefulSet", "db")),
		pod("logs-x", ref("DaemonSet", "logs")),
		pod("bare", nil),
		pod("batch-x", &metav1.OwnerReference{APIVersion: "batch/v1", Kind: "Job", Name: "batch", Controller: ptr.To(true)}),
		pod("orphan-x", ref("ReplicaSet", "orphan")),
		pod("gone-x", ref("ReplicaSet", "gone")),
		pod("ext-x", &metav1.OwnerReference{APIVersion: "example.com/v1", Kind: "Rollout", Name: "r", Controller: ptr.To(true)}),
		// Same kind names, other groups: not the apps controllers.
		pod("kruise-0", &metav1.OwnerReference{APIVersion: "apps.kruise.io/v1beta1", Kind: "StatefulSet", Name: "db", Controller: ptr.To(true)}),
		pod("kruise-ds", &metav1.OwnerReference{APIVersion: "apps.kruise.io/v1alpha1", Kind: "DaemonSet", Name: "logs", Controller: ptr.To(true)}),
		pod("other-rs", &metav1.OwnerReference{APIVersion: "example.com/v1", Kind: "ReplicaSet", Name: "web-1", Controller: ptr.To(true)}),
		pod("other-job", &metav1.OwnerReference{APIVersion: "example.com/v1", Kind: "Job", Name: "batch", Controller: ptr.To(true)}),
		pod("argo-1-a", ref("ReplicaSet", "argo-1")),
		pod("fake-1-a", ref("ReplicaSet", "fake-1")),
	}
	ws, skipped, err := Resolve(pods, c)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range ws {
		got = append(got, fmt.Sprintf("%s=%d", w, w.Pods))
	}
	want := []string{"DaemonSet shop/logs=1", "Deployment shop/web=3", "StatefulSet shop/db=1"}
	if len(got) != len(want) {
		t.Fatalf("Resolve = %q; want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("Resolve[%d] = %q; want %q", i, got[i], want[i])
		}
	}
	wantSkipped := map[string]string{
		"shop/bare": "bare pod", "shop/batch-x": "Job", "shop/orphan-x": "not managed by a Deployment",
		"shop/gone-x": "gone", "shop/ext-x": "does not manage",
		"shop/kruise-0":  "a StatefulSet (apps.kruise.io/v1beta1), which k8secrets does not manage",
		"shop/kruise-ds": "a DaemonSet (apps.kruise.io/v1alpha1), which k8secrets does not manage",
		"shop/other-rs":  "a ReplicaSet (example.com/v1)", "shop/other-job": "a Job (example.com/v1)",
		"shop/argo-1-a": "owned by a Rollout (argoproj.io/v1alpha1)", "shop/fake-1-a": "owned by a Deployment (example.com/v1)",
	}
	if len(skipped) != len(wantSkipped) {
		t.Fatalf("skipped = %+v; want %d entries", skipped, len(wantSkipped))
	}
	for _, s := range skipped {
		if w, ok := wantSkipped[s.Pod]; !ok || !strings.Contains(s.Reason, w) {
			t.Errorf("skipped %s: %q; want a reason about %q", s.Pod, s.Reason, w)
		}
	}
}
