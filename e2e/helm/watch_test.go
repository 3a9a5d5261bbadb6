//go:build e2e

package helm

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// watchSelector selects the pods of the chart's watch Deployment.
const watchSelector = "app.kubernetes.io/component=watch,app.kubernetes.io/instance=" + release

// helm install with watch.enabled runs "k8secrets-job watch" as the chart
// renders it: the Deployment k8secrets-watch has its two replicas Ready under
// the ServiceAccount k8secrets-watch, and one of them holds and renews the
// Lease k8secrets-watch (which needs the chart's Role: without its leases
// rule no replica ever leads). helm uninstall then removes the Deployment,
// its pods, the ServiceAccount, the Role and the RoleBinding; the Lease,
// which the watch created and is not the chart's, is left with no live
// holder. (Seen here: it still names the last leader, unreleased, and
// expires 15 s later; see the chart README's Uninstall.)
func TestHelmInstallWatchUninstall(t *testing.T) {
	c, ctx, tag := start(t, false)
	ns := c.Namespace(t)
	chart, err := filepath.Abs("../../charts/k8secrets")
	if err != nil {
		t.Fatal(err)
	}
	out, err := helmCmd(ctx, t, c, "install", release, chart, "-n", ns, "--wait", "--timeout", "3m",
		"--set", "image.repository=k8secrets-job", "--set", "image.tag="+tag,
		"--set", "namespaces[0].name="+ns, "--set", "namespaces[0].secrets[0]="+secret,
		"--set", "watch.enabled=true")
	if err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	if err := c.WaitDeploymentAvailable(ctx, ns, "k8secrets-watch", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	pods, err := c.Pods(ctx, ns, watchSelector)
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{}
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			continue
		}
		live[p.Name] = true
		if p.Spec.ServiceAccountName != "k8secrets-watch" || p.Spec.Containers[0].Image != "k8secrets-job:"+tag {
			t.Errorf("pod %s/%s runs %s as %s; want k8secrets-job:%s as k8secrets-watch", ns, p.Name, p.Spec.Containers[0].Image, p.Spec.ServiceAccountName, tag)
		}
	}
	if len(live) != 2 {
		t.Fatalf("%d live pods of the watch in %s; want 2", len(live), ns)
	}

	// One replica holds the Lease and renews it: its renewTime moves on.
	var holder string
	var renewed *metav1.MicroTime
	var last string
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := c.Client.CoordinationV1().Leases(ns).Get(ctx, "k8secrets-watch", metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		h := ""
		if l.Spec.HolderIdentity != nil {
			h, _, _ = strings.Cut(*l.Spec.HolderIdentity, "_")
		}
		if !live[h] || l.Spec.RenewTime == nil {
			last = "holder " + h + ", not a live watch pod"
			holder, renewed = "", nil
			return false, nil
		}
		if holder == h && renewed != nil && !l.Spec.RenewTime.Equal(renewed) {
			return true, nil
		}
		holder, renewed = h, l.Spec.RenewTime
		last = "holder " + h + " has not renewed the Lease yet"
		return false, nil
	})
	if err != nil {
		t.Fatalf("Lease %s/k8secrets-watch: %s: %v", ns, last, err)
	}
	t.Logf("pod %s holds and renews Lease %s/k8secrets-watch", holder, ns)

	if out, err := helmCmd(ctx, t, c, "uninstall", release, "-n", ns, "--wait", "--timeout", "2m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	gone := map[string]func() error{
		"Deployment": func() error {
			_, err := c.Client.AppsV1().Deployments(ns).Get(ctx, "k8secrets-watch", metav1.GetOptions{})
			return err
		},
		"ServiceAccount": func() error {
			_, err := c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "k8secrets-watch", metav1.GetOptions{})
			return err
		},
		"Role": func() error {
			_, err := c.Client.RbacV1().Roles(ns).Get(ctx, "k8secrets-watch", metav1.GetOptions{})
			return err
		},
		"RoleBinding": func() error {
			_, err := c.Client.RbacV1().RoleBindings(ns).Get(ctx, "k8secrets-watch", metav1.GetOptions{})
			return err
		},
	}
	for kind, get := range gone {
		if err := get(); !apierrors.IsNotFound(err) {
			t.Errorf("after helm uninstall, get %s %s/k8secrets-watch: err = %v; want NotFound", kind, ns, err)
		}
	}
	// The pods go with their ReplicaSet, after their grace period.
	var left int
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.Pods(ctx, ns, watchSelector)
		left = len(pods)
		return err == nil && left == 0, nil
	})
	if err != nil {
		t.Errorf("after helm uninstall, %d pods of the watch are left in %s: %v", left, ns, err)
	}
	l, err := c.Client.CoordinationV1().Leases(ns).Get(ctx, "k8secrets-watch", metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		t.Logf("after helm uninstall, no Lease %s/k8secrets-watch", ns)
	case err != nil:
		t.Fatal(err)
	case l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "":
		t.Logf("after helm uninstall, Lease %s/k8secrets-watch is left, released", ns)
	default:
		h, _, _ := strings.Cut(*l.Spec.HolderIdentity, "_")
		if _, err := c.Client.CoreV1().Pods(ns).Get(ctx, h, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("after helm uninstall, Lease %s/k8secrets-watch is held by %s, which is still there (err %v)", ns, h, err)
		}
		t.Logf("after helm uninstall, Lease %s/k8secrets-watch is left, its holder %s gone (renewed %v, duration %vs)", ns, h, l.Spec.RenewTime, *l.Spec.LeaseDurationSeconds)
	}
}
