package rollout

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func TestPreflight(t *testing.T) {
	paused := deploy(1, 1, 2, appsv1.DeploymentStatus{})
	paused.Spec.Paused = true
	owned := deploy(1, 1, 2, appsv1.DeploymentStatus{})
	owned.OwnerReferences = []metav1.OwnerReference{{APIVersion: "example.com/v1", Kind: "App", Name: "shop", UID: "u", Controller: ptr.To(true)}}
	part := func(p int32) runtime.Object {
		return sts(1, 1, 3, appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType,
			RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{Partition: ptr.To(p)}}, appsv1.StatefulSetStatus{ReadyReplicas: 3})
	}
	onDelete := appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}
	for _, tc := range []struct {
		name    string
		obj     runtime.Object
		inject  bool
		refused string // substring of the refusal
		skip    string // substring of the skip reason
		note    string // substring of a note
	}{
		{"plain deployment", deploy(1, 1, 2, appsv1.DeploymentStatus{}), true, "", "", ""},
		{"paused deployment", paused, true, "is paused", "", ""},
		{"paused deployment, remove", paused, false, "is paused", "", ""},
		{"owned deployment", owned, true, "", "owned by App shop (example.com/v1)", ""},
		{"owned deployment, remove", owned, false, "", "", ""},
		{"partition at replicas", part(3), true, "partition 3 with 3 replicas", "", ""},
		{"partition above replicas", part(5), true, "partition 5 with 3 replicas", "", ""},
		{"partition below replicas", part(1), true, "", "", "partition 1: only the 2 pods"},
		{"ondelete statefulset", sts(1, 1, 3, onDelete, appsv1.StatefulSetStatus{ReadyReplicas: 3}), true, "", "", "Eviction API"},
		{"ondelete statefulset, a pod unready", sts(1, 1, 3, onDelete, appsv1.StatefulSetStatus{ReadyReplicas: 2}), true, "2 of 3 pods Ready", "", ""},
		{"ondelete daemonset", ds(1, 1, appsv1.OnDeleteDaemonSetStrategyType, appsv1.DaemonSetStatus{DesiredNumberScheduled: 2, NumberReady: 2}), true, "", "", "Eviction API"},
		{"ondelete daemonset, a pod unready", ds(1, 1, appsv1.OnDeleteDaemonSetStrategyType, appsv1.DaemonSetStatus{DesiredNumberScheduled: 2, NumberReady: 1}), true, "1 of 2 pods Ready", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Preflight(tc.obj, tc.inject)
			switch {
			case tc.refused != "":
				if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.refused) {
					t.Fatalf("Preflight(%s) = %v; want a refusal saying %q", tc.name, err, tc.refused)
				}
				return
			case err != nil:
				t.Fatalf("Preflight(%s) = %v; want no refusal", tc.name, err)
			}
			if (tc.skip == "") != (v.Skip == "") || !strings.Contains(v.Skip, tc.skip) {
				t.Errorf("Preflight(%s).Skip = %q; want %q", tc.name, v.Skip, tc.skip)
			}
			if got := strings.Join(v.Notes, "; "); (tc.note == "") != (got == "") || !strings.Contains(got, tc.note) {
				t.Errorf("Preflight(%s).Notes = %q; want %q", tc.name, got, tc.note)
			}
		})
	}
}

// Only admission and validation denials are verdicts on the change (exit
// 4); the rest are retryable, and an RBAC refusal names the verb.
func TestVerdict(t *testing.T) {
	pods := schema.GroupResource{Resource: "pods"}
	for _, tc := range []struct {
		name     string
		err      error
		rejected bool
		contains string
	}{
		{"pod security", apierrors.NewForbidden(pods, "", fmt.Errorf(`violates PodSecurity "restricted:latest": runAsNonRoot != true`)), true, "PodSecurity"},
		{"quota", apierrors.NewForbidden(pods, "", fmt.Errorf("exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2")), true, "exceeded quota"},
		{"webhook denial", apierrors.NewForbidden(pods, "", fmt.Errorf(`admission webhook "deny.example.com" denied the request: no`)), true, "denied"},
		{"invalid", apierrors.NewInvalid(schema.GroupKind{Kind: "Pod"}, "", nil), true, ""},
		{"rbac", apierrors.NewForbidden(pods, "", fmt.Errorf(`User "job" cannot create resource "pods" in API group "" in the namespace "ns"`)), false, `grant verb "create" on pods`},
		{"webhook down", apierrors.NewInternalError(fmt.Errorf(`failed calling webhook "deny.example.com": connection refused`)), false, "retry"},
		{"throttled", apierrors.NewTooManyRequests("slow down", 1), false, "retry"},
		{"timeout", apierrors.NewTimeoutError("slow", 1), false, "retry"},
		{"unavailable", apierrors.NewServiceUnavailable("etcd"), false, "retry"},
		{"transport", fmt.Errorf("dial tcp: connection refused"), false, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := verdict("a pod of Deployment ns/web", "pods", tc.err)
			if errors.Is(err, ErrRejected) != tc.rejected || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("verdict(%s) = %v; want rejected %v, saying %q", tc.name, err, tc.rejected, tc.contains)
			}
		})
	}
}

func TestSurges(t *testing.T) {
	d := func(s appsv1.DeploymentStrategy) *appsv1.Deployment {
		return &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(2)), Strategy: s}}
	}
	zero := intstrPtr(0)
	for _, tc := range []struct {
		name string
		obj  runtime.Object
		want bool
	}{
		{"default rolling update", d(appsv1.DeploymentStrategy{}), true},
		{"maxSurge 0", d(appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType, RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: zero}}), false},
		{"recreate", d(appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}), false},
		{"statefulset", &appsv1.StatefulSet{}, false},
	} {
		if got := surges(tc.obj); got != tc.want {
			t.Errorf("surges(%s) = %v; want %v", tc.name, got, tc.want)
		}
	}
}

func intstrPtr(n int) *intstr.IntOrString { v := intstr.FromInt(n); return &v }
