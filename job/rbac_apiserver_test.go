package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/k8secrets/k8secrets/internal/apitest"
)

// A Role without a rule the Job's informers need (here replicasets) makes
// the Job fail at once, naming the refused verb and resource, instead of
// waiting forever for a cache that cannot sync.
func TestAPIMissingInformerVerbFailsFast(t *testing.T) {
	cl := newCluster(t, never)
	env := apitest.Shared(t)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	asJob := cl.bindRole(env, "../manifests/base/role.yaml", "k8secrets-job", func(r *rbacv1.Role) {
		r.Rules[0].ResourceNames = []string{"db-creds"} // as the secret-access component does
		r.Rules = slices.DeleteFunc(r.Rules, func(rule rbacv1.PolicyRule) bool { return slices.Contains(rule.Resources, "replicasets") })
	}, func(ctx context.Context, c kubernetes.Interface) error {
		_, err := c.AppsV1().Deployments(cl.ns).List(ctx, metav1.ListOptions{})
		return err
	})
	start := time.Now()
	r := cl.jobAs(cl.ctx, asJob, injectArgs("app=web", "db-creds")...)
	took := time.Since(start)
	if r.code == 0 || !strings.Contains(errString(r.err), "replicasets") || !strings.Contains(errString(r.err), "forbidden") {
		t.Fatalf("inject without list/watch on replicasets: exit %d (%v); want an error naming the forbidden replicasets", r.code, r.err)
	}
	t.Logf("the Job gave up after %s", took.Round(10*time.Millisecond))
}
