//go:build e2e

package job

import (
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Two Jobs for two different Secrets on one Deployment at once, on kind,
// with real pods: the injection of b cannot start (its agent image does not
// exist). The per-workload Lease keeps the runs apart: a ends injected and
// rolled out (exit 0), b is rolled back (exit 5) or, had it waited past its
// --timeout for the Deployment, refused with nothing changed (exit 7). At the
// end every pod is Ready and mounts a, not b, and no Lease is left.
func TestActorsTwoSecretsOneDeployment(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	ns := s.Namespace(t)
	va := s.createSecret(ctx, t, ns, "a")
	vb := s.createSecret(ctx, t, ns, "b")
	s.deployment(ctx, t, ns, "web", "web", 2)

	var ra, rb result
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		ra = s.job(ctx, t, "", ns, [][]byte{va, vb}, s.injectArgs("app=web", "a", "--timeout", "3m")...)
	}()
	go func() {
		defer wg.Done()
		rb = s.job(ctx, t, "", ns, [][]byte{va, vb}, "inject", "-l", "app=web", "--secret", "b", "--agent-image", missingImage, "--timeout", "20s")
	}()
	wg.Wait()
	if ra.code != 0 {
		t.Errorf("run for a: %s\nwant exit 0: b's broken pods are not a's to judge", ra)
	}
	if rb.code != 5 && rb.code != 7 {
		t.Errorf("run for b: %s\nwant exit 5 (rolled back) or 7 (refused while a held the Deployment)", rb)
	}
	pods := s.settledPods(ctx, t, ns, "app=web", 2, "a", true)
	for i := range pods {
		if mountsSecret(&pods[i], "b") {
			t.Errorf("pod %s mounts b, whose run failed", pods[i].Name)
		}
	}
	s.checkSecretFile(ctx, t, pods, "a", va)
	leases, err := s.Client.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(leases.Items) != 0 {
		t.Errorf("leases left behind: %v (%v)", leases.Items, err)
	}
}
