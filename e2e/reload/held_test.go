//go:build e2e

package reload

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

const restartHeld = "k8secrets.io/restart-held"

// TestHeldPodsWaitPastTheirTurnHold: a Secret update the app cannot start
// with. refresh restarts the first pod, which then crash-loops, and stops
// there (exit 9) so that two are never down; the two pods left are held.
// The kubelet has given them the new content already (the hold is a change
// to the pod), and their agents' --turn-hold (set to 20 s here by another
// actor's edit of the template) runs out: before holds they then restarted
// on their own, into the same crash, and all three were down. Now they keep
// their apps running until their turn. A fixed Secret and a refresh then
// bring the crash-looping pod back first and restart the others one at a
// time, never two down, and release every hold.
func TestHeldPodsWaitPastTheirTurnHold(t *testing.T) {
	c, ctx, ns := begin(t, 12*time.Minute)
	const secret = "held-secret"
	createSecret(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"))
	createWorkload(ctx, t, c, ns, web, 3, secret)
	editDeployment(ctx, t, c, ns, web.name, func(d *appsv1.Deployment) {
		for i, ct := range d.Spec.Template.Spec.Containers {
			if ct.Name == appContainer {
				d.Spec.Template.Spec.Containers[i].Args = append(ct.Args, "--exit-on-version=bad")
			}
		}
	})
	waitRolledOut(ctx, t, c, ns, web, 3)
	inject(ctx, t, c, ns, secret, "restart")
	editDeployment(ctx, t, c, ns, web.name, func(d *appsv1.Deployment) {
		for i, ct := range d.Spec.Template.Spec.InitContainers {
			if strings.HasPrefix(ct.Name, "k8secrets-agent-") {
				d.Spec.Template.Spec.InitContainers[i].Env = append(ct.Env, corev1.EnvVar{Name: "K8SECRETS_AGENT_TURN_HOLD", Value: "20s"})
			}
		}
	})
	before := injectedPods(ctx, t, c, ns, secret, "restart", "v1", map[workload]int{web: 3})

	updateSecret(ctx, t, c, ns, secret, opaque("bad"))
	_, stderr, code := runJobCode(ctx, t, c, ns, "refresh", "--secret", secret, "--wait=false", "--settle=45s")
	if code != 9 || !strings.Contains(stderr, "the 2 left are held") {
		t.Errorf("refresh: exit %d, stderr:\n%s\nwant exit 9, the first pod not Ready and the 2 left held", code, stderr)
	}
	// The pod refresh names is the one it restarted; the others are held.
	var first string
	var held []seen
	for _, b := range before {
		if strings.Contains(stderr, "pod "+ns+"/"+b.pod.Name+" ") {
			first = b.pod.Name
			continue
		}
		held = append(held, b)
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Annotations[restartHeld] == "" {
			t.Errorf("pod %s: no %s annotation; want it held", p.Name, restartHeld)
		}
	}
	if first == "" || len(held) != 2 {
		t.Fatalf("refresh's error names none of the pods as the one it restarted:\n%s", stderr)
	}
	for _, b := range held {
		waitStatus(ctx, t, c, ns, b.pod.Name, "the new content on disk", func(s agentStatus) bool {
			d := s.Directories[0]
			return d.Seen != "" && d.Seen != d.Loaded
		})
	}
	// The held pods had the content when they were held, before the 45 s
	// of --settle: 20 s of --turn-hold are long past. A little more for a
	// restart that would have begun.
	time.Sleep(15 * time.Second)
	for _, b := range held {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := restarts(p, appContainer); r != b.restarts || !podReady(p) {
			t.Errorf("held pod %s: app restartCount %d (was %d), Ready %v; want its app untouched and Ready past --turn-hold", p.Name, r, b.restarts, podReady(p))
		}
		if s := status(ctx, t, c, ns, b.pod.Name); s.Directories[0].State != "pending" {
			t.Errorf("held pod %s: agent state %q; want pending", p.Name, s.Directories[0].State)
		}
	}
	// What status says of them: stale, held until their turn.
	// And of the first: it loaded the content, but its app crash-loops.
	firstLine := func(out string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, first) {
				return l
			}
		}
		return ""
	}
	if out, stderr, code := runJobCode(ctx, t, c, ns, "status", "--secret", secret); strings.Count(out, "held until its turn") != 2 ||
		!strings.Contains(firstLine(out), "notReady") || !strings.Contains(firstLine(out), "but the pod is not Ready: container "+appContainer) {
		t.Errorf("status (exit %d) does not say of both held pods that they are held, and of %s that it is notReady:\n%s\n%s", code, first, out, stderr)
	} else {
		t.Logf("status:\n%s", out)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Fixed: the crash-looping pod comes back first, then the held ones
	// restart one at a time.
	follow := followPods(ctx, t, c, ns, web.name)
	updateSecret(ctx, t, c, ns, secret, opaque("v3"))
	if _, stderr, code := runJobCode(ctx, t, c, ns, "refresh", "--secret", secret, "--wait=false", "--settle=4m"); code != 0 {
		t.Fatalf("refresh of the fixed Secret: exit %d, stderr:\n%s", code, stderr)
	}
	for _, b := range before {
		if _, err := waitApp(ctx, c, ns, b.pod.Name, 3*time.Minute, "version v3", version("v3")); err != nil {
			t.Fatal(err)
		}
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := p.Annotations[restartHeld]; ok {
			t.Errorf("pod %s still held (%q) after a refresh that went through", p.Name, v)
		}
	}
	time.Sleep(3 * time.Second) // the last status update reaches the pod watch
	follow.end()
	follow.mu.Lock()
	defer follow.mu.Unlock()
	if len(follow.together) > 0 {
		t.Errorf("apps not Ready at the same time: %s", strings.Join(follow.together, "; "))
	}
}

// editDeployment changes the Deployment as another actor would (an update
// of its own, retried on conflict).
func editDeployment(ctx context.Context, t *testing.T, c *framework.Cluster, ns, name string, edit func(*appsv1.Deployment)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := c.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		edit(d)
		_, err = c.Client.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{FieldManager: "another-actor"})
		return err
	})
	if err != nil {
		t.Fatalf("edit deployment %s/%s: %v", ns, name, err)
	}
}
