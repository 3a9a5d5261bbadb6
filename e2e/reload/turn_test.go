//go:build e2e

package reload

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestRestartWaitsForItsTurn: right after a Secret update, another actor
// (a label on every pod, as an operator or a policy engine writes them)
// makes the kubelets resync the pods, and so deliver the new content to
// all of them at once, as the kubelet's own periodic sync does to any pod
// at any moment. The restart-mode agents hold it (their /status says
// pending, the apps keep running) until their pod's turn; refresh gives
// the turns one pod at a time, and each app restarts once, never two down.
// Before turns, the three apps restarted together on the label.
func TestRestartWaitsForItsTurn(t *testing.T) {
	c, ctx, ns := begin(t, 8*time.Minute)
	const secret = "turn-secret"
	before := injectedWeb(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"), 3, "restart")
	follow := followPods(ctx, t, c, ns, "web")

	updateSecret(ctx, t, c, ns, secret, opaque("v2"))
	for _, b := range before {
		patch := []byte(`{"metadata":{"labels":{"touched-by":"another-actor"}}}`)
		if _, err := c.Client.CoreV1().Pods(ns).Patch(ctx, b.pod.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "another-actor"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range before {
		waitStatus(ctx, t, c, ns, b.pod.Name, "the new content on disk, not yet loaded", func(s agentStatus) bool {
			d := s.Directories[0]
			return d.Seen != "" && d.Loaded != "" && d.Seen != d.Loaded && d.State == "pending"
		})
	}
	// Before turns the apps restarted within a second or two of the
	// content (plus up to 5 s of jitter): 10 s would have seen it.
	time.Sleep(10 * time.Second)
	for _, b := range before {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := restarts(p, appContainer); r != b.restarts {
			t.Errorf("pod %s: app restartCount %d, was %d: restarted before its turn", p.Name, r, b.restarts)
		}
	}

	refresh(ctx, t, c, ns, secret)
	for _, b := range before {
		if _, err := waitApp(ctx, c, ns, b.pod.Name, 3*time.Minute, "version v2", version("v2")); err != nil {
			t.Fatal(err)
		}
		waitStatus(ctx, t, c, ns, b.pod.Name, "the new content loaded", func(s agentStatus) bool {
			d := s.Directories[0]
			return d.Seen != "" && d.Seen == d.Loaded && d.State == "loaded"
		})
	}
	time.Sleep(3 * time.Second) // the last status update reaches the pod watch
	follow.end()
	checkRestartedOneAtATime(ctx, t, c, ns, before, follow)
}
