//go:build e2e

package job

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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
