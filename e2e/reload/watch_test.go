//go:build e2e

package reload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

// The watch's marks and names (job/internal/watch).
const (
	rotatedPrefix    = "k8secrets.io/rotated-"
	resumeAnnotation = "k8secrets.io/resume"
	refreshedAt      = "k8secrets.io/refreshed-at"
	watchController  = "k8secrets.io/watch"
	watchLease       = "k8secrets-watch"
)

// deployWatch applies manifests/watch in ns (two replicas under the shipped
// Role), with the job image of E2E_IMAGE_TAG and extra arguments, and waits
// until one replica leads and both are Ready.
func deployWatch(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, extra ...string) {
	t.Helper()
	tag := imageTag(t)
	if err := c.LoadImages(ctx, "k8secrets-job:"+tag); err != nil && !errors.Is(err, framework.ErrNotKind) {
		t.Fatal(err)
	}
	manifests, err := filepath.Abs("../../manifests")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, manifests)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"watch", "--log-format=json", "--listen=:9534"}, extra...)
	overlay := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: %s
resources:
  - %s/watch
images:
  - name: ghcr.io/k8secrets/k8secrets-job
    newName: k8secrets-job
    newTag: %q
patches:
  - target: {kind: Deployment, name: k8secrets-watch}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/args
        value: ["%s"]
`, ns, rel, tag, strings.Join(args, `", "`))
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl := os.Getenv("E2E_KUBECTL")
	if kubectl == "" {
		kubectl = "kubectl"
	}
	rendered, err := exec.CommandContext(ctx, kubectl, "kustomize", dir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize of the watch overlay:\n%s\n%v", overlay, err)
	}
	apply := exec.CommandContext(ctx, kubectl, "--kubeconfig", c.Kubeconfig, "apply", "-f", "-")
	apply.Stdin = bytes.NewReader(rendered)
	if out, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply manifests/watch: %v\n%s", err, out)
	}
	if err := c.WaitDeploymentAvailable(ctx, ns, "k8secrets-watch", 3*time.Minute); err != nil {
		t.Fatalf("the watch Deployment: %v", err)
	}
	until(ctx, t, "a watch replica leads", 2*time.Minute, func() (bool, string) {
		l := leader(ctx, c, ns)
		return l != "", "no holder of Lease " + watchLease
	})
}

// leader is the pod name of the replica holding the watch's Lease.
func leader(ctx context.Context, c *framework.Cluster, ns string) string {
	l, err := c.Client.CoordinationV1().Leases(ns).Get(ctx, watchLease, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	pod, _, _ := strings.Cut(*l.Spec.HolderIdentity, "_")
	return pod
}

// until polls cond every 200 ms until it holds; it fails the test with
// cond's last word after timeout.
func until(ctx context.Context, t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: not within %s: %s", what, timeout, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// recordedOn is the watch's record of the Secret's rotation on a Deployment.
func recordedOn(ctx context.Context, c *framework.Cluster, ns, deployment string) string {
	d, err := c.Client.AppsV1().Deployments(ns).Get(ctx, deployment, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	for k, v := range d.Annotations {
		if strings.HasPrefix(k, rotatedPrefix) {
			return v
		}
	}
	return ""
}

// watchEvents lists "Kind/name" of the watch's Events of reason in ns.
func watchEvents(ctx context.Context, t *testing.T, c *framework.Cluster, ns, reason string) []string {
	t.Helper()
	l, err := c.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range l.Items {
		if e.Reason == reason && e.ReportingController == watchController {
			out = append(out, e.Regarding.Kind+"/"+e.Regarding.Name)
		}
	}
	sort.Strings(out)
	return out
}

// podLog follows, from before an update, the pods of one workload: when
// each app container goes not-Ready, how many are down at once, and every
// refresh annotation each pod carried (one per rotation that reached it).
type podLog struct {
	mu       sync.Mutex
	down     map[string]bool
	wentDown map[string]int
	together []string
	pokes    map[string]map[string]bool // pod -> refresh annotation values
	stop     func()
	done     chan struct{}
}

func followPods(ctx context.Context, t *testing.T, c *framework.Cluster, ns, workloadName string) *podLog {
	t.Helper()
	sel := "workload=" + workloadName
	list, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	l := &podLog{down: map[string]bool{}, wentDown: map[string]int{}, pokes: map[string]map[string]bool{}, stop: w.Stop, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			ready := false
			for _, s := range p.Status.ContainerStatuses {
				if s.Name == appContainer {
					ready = s.Ready && s.State.Running != nil
				}
			}
			l.mu.Lock()
			if v := p.Annotations[refreshedAt]; v != "" {
				if l.pokes[p.Name] == nil {
					l.pokes[p.Name] = map[string]bool{}
				}
				l.pokes[p.Name][v] = true
			}
			if !ready && !l.down[p.Name] {
				l.wentDown[p.Name]++
			}
			l.down[p.Name] = !ready
			var now []string
			for name, d := range l.down {
				if d {
					now = append(now, name)
				}
			}
			if len(now) > 1 {
				l.together = append(l.together, fmt.Sprintf("%s at rv %s", strings.Join(now, ", "), p.ResourceVersion))
			}
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *podLog) end() {
	l.stop()
	<-l.done
}

// TestWatchRotatesSignalAndRestart: the watch Deployment of manifests/watch
// (two replicas, the shipped Role) and two injected Deployments, one in
// signal mode and one in restart mode. An update of each Secret reaches
// every pod's app well before the kubelet's own sync would deliver it, with
// no pipeline step: the signal apps reload in place, the restart apps
// restart once each, never two down at once; Refreshed and Verified Events
// land on both Deployments and both Secrets.
func TestWatchRotatesSignalAndRestart(t *testing.T) {
	c, ctx, ns := begin(t, 12*time.Minute)
	sig, rst := workload{"Deployment", "sig"}, workload{"Deployment", "rst"}
	createSecret(ctx, t, c, ns, "sig-secret", corev1.SecretTypeOpaque, opaque("v1"))
	createSecret(ctx, t, c, ns, "rst-secret", corev1.SecretTypeOpaque, opaque("v1"))
	createWorkload(ctx, t, c, ns, sig, 2, "sig-secret")
	createWorkload(ctx, t, c, ns, rst, 3, "rst-secret")
	waitRolledOut(ctx, t, c, ns, sig, 2)
	waitRolledOut(ctx, t, c, ns, rst, 3)
	for _, w := range []struct{ sel, secret, reload string }{{"workload=sig", "sig-secret", "signal:SIGHUP"}, {"workload=rst", "rst-secret", "restart"}} {
		runJob(ctx, t, c, ns, "inject", "-l", w.sel, "--secret", w.secret,
			"--agent-image=k8secrets-agent:"+imageTag(t), "--reload="+w.reload, "--timeout=3m")
	}
	sigPods := injectedPods(ctx, t, c, ns, "sig-secret", "signal:SIGHUP", "v1", map[workload]int{sig: 2})
	rstPods := injectedPods(ctx, t, c, ns, "rst-secret", "restart", "v1", map[workload]int{rst: 3})

	deployWatch(ctx, t, c, ns, "--settle=60s")
	until(ctx, t, "the watch's baselines", time.Minute, func() (bool, string) {
		return recordedOn(ctx, c, ns, "sig") != "" && recordedOn(ctx, c, ns, "rst") != "", "no rotated- annotation on sig and rst yet"
	})
	// Any change to a pod makes its kubelet resync it: let the new pods
	// settle, so that what delivers the update is the watch.
	time.Sleep(15 * time.Second)
	follow := followPods(ctx, t, c, ns, "rst")

	start := time.Now()
	updateSecret(ctx, t, c, ns, "sig-secret", opaque("v2"))
	updateSecret(ctx, t, c, ns, "rst-secret", opaque("v2"))
	// The kubelet alone takes up to 90 s here (p50 38 s); the watch, about a
	// second. Without the watch the Events below never come.
	checkReloadedInPlace(ctx, t, c, ns, "v2", sigPods)
	t.Logf("signal: every app serves v2 %.1fs after the update", time.Since(start).Seconds())
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("signal apps took %s to serve v2; the watch should deliver within seconds (the kubelet's own sync: up to 90 s, p50 38 s)", d.Round(time.Millisecond))
	}
	for _, b := range rstPods {
		if _, err := waitApp(ctx, c, ns, b.pod.Name, 3*time.Minute, "version v2", version("v2")); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("restart: every app serves v2 %.1fs after the update", time.Since(start).Seconds())
	until(ctx, t, "Verified events", time.Minute, func() (bool, string) {
		got := watchEvents(ctx, t, c, ns, "Verified")
		return strings.Join(got, " ") == "Deployment/rst Deployment/sig Secret/rst-secret Secret/sig-secret", fmt.Sprintf("Verified on %v", got)
	})
	time.Sleep(3 * time.Second) // the last status update reaches the pod watch
	follow.end()

	for _, reason := range []string{"Refreshed", "Verified"} {
		if got := strings.Join(watchEvents(ctx, t, c, ns, reason), " "); got != "Deployment/rst Deployment/sig Secret/rst-secret Secret/sig-secret" {
			t.Errorf("%s events on %s; want one on each Deployment and each Secret", reason, got)
		}
	}
	// Two replicas ran; only the leader acted.
	lead := leader(ctx, c, ns)
	evs, err := c.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.ReportingController == watchController && e.ReportingInstance != lead {
			t.Errorf("%s Event on %s/%s from %s; want every one from the leader %s", e.Reason, e.Regarding.Kind, e.Regarding.Name, e.ReportingInstance, lead)
		}
	}
	checkRestartedOneAtATime(ctx, t, c, ns, rstPods, follow)
}

// checkRestartedOneAtATime checks, after follow has ended, that each pod is
// the same pod, its app restarted once (restartCount +1) and went not
// Ready once, and that no two apps were not Ready at the same time.
func checkRestartedOneAtATime(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, pods []seen, follow *podLog) {
	t.Helper()
	follow.mu.Lock()
	defer follow.mu.Unlock()
	for _, b := range pods {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.UID != b.pod.UID {
			t.Errorf("pod %s was replaced; want the same pod", p.Name)
		}
		if r := restarts(p, appContainer); r != b.restarts+1 {
			t.Errorf("pod %s: app restartCount %d, was %d; want +1", p.Name, r, b.restarts)
		}
		if follow.wentDown[b.pod.Name] != 1 {
			t.Errorf("pod %s: its app went not-Ready %d times; want once", b.pod.Name, follow.wentDown[b.pod.Name])
		}
	}
	if len(follow.together) > 0 {
		t.Errorf("restart-mode apps not Ready at the same time: %s", strings.Join(follow.together, "; "))
	}
}

// TestWatchBreakerTripsOnFlappingSecret: a Secret updated every second for
// 20 s trips the breaker (RotationSuspended on the Secret and the
// Deployment; the pods' refresh annotations, not the tool's report, count
// at most 20 s / 10 s + 1 rotations); its resume annotation resumes it, and
// every pod ends with the last content.
func TestWatchBreakerTripsOnFlappingSecret(t *testing.T) {
	c, ctx, ns := begin(t, 10*time.Minute)
	before := injectedWeb(ctx, t, c, ns, "flap", corev1.SecretTypeOpaque, opaque("v1"), 2, "signal:SIGHUP")
	deployWatch(ctx, t, c, ns)
	until(ctx, t, "the watch's baseline", time.Minute, func() (bool, string) {
		return recordedOn(ctx, c, ns, "web") != "", "no rotated- annotation on web yet"
	})
	follow := followPods(ctx, t, c, ns, "web")
	const flaps = 20
	for i := 2; i <= flaps+1; i++ {
		updateSecret(ctx, t, c, ns, "flap", opaque(fmt.Sprintf("v%d", i)))
		time.Sleep(time.Second)
	}
	until(ctx, t, "RotationSuspended events", 30*time.Second, func() (bool, string) {
		got := watchEvents(ctx, t, c, ns, "RotationSuspended")
		return strings.Join(got, " ") == "Deployment/web Secret/flap", fmt.Sprintf("RotationSuspended on %v", got)
	})
	// The leader's metric says the breaker is open.
	until(ctx, t, "breaker_open metric", 30*time.Second, func() (bool, string) {
		body, err := c.Client.CoreV1().Pods(ns).ProxyGet("http", leader(ctx, c, ns), "9534", "/metrics", nil).DoRaw(ctx)
		return err == nil && bytes.Contains(body, []byte(`k8secrets_watch_breaker_open{namespace="`+ns+`",secret="flap"} 1`)), fmt.Sprintf("metrics: %v", err)
	})
	follow.mu.Lock()
	during := map[string]int{}
	for _, b := range before {
		during[b.pod.Name] = len(follow.pokes[b.pod.Name])
	}
	follow.mu.Unlock()
	for pod, n := range during {
		if n < 1 || n > flaps/10+1 {
			t.Errorf("pod %s: refreshed %d times while its Secret changed %d times in %d s; want 1 to %d", pod, n, flaps, flaps, flaps/10+1)
		}
	}
	t.Logf("refreshes per pod while flapping: %v", during)

	// Resume by annotation: one more rotation, to the last content.
	s, err := c.Client.CoreV1().Secrets(ns).Get(ctx, "flap", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Annotations = map[string]string{resumeAnnotation: time.Now().Format(time.RFC3339)}
	if _, err := c.Client.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	last := fmt.Sprintf("v%d", flaps+1)
	for _, b := range before {
		if _, err := waitApp(ctx, c, ns, b.pod.Name, 30*time.Second, "version "+last, version(last)); err != nil {
			t.Error(err)
		}
	}
	until(ctx, t, "the resumed rotation", 30*time.Second, func() (bool, string) {
		follow.mu.Lock()
		defer follow.mu.Unlock()
		for _, b := range before {
			if len(follow.pokes[b.pod.Name]) != during[b.pod.Name]+1 {
				return false, fmt.Sprintf("pod %s refreshed %d times", b.pod.Name, len(follow.pokes[b.pod.Name]))
			}
		}
		return true, ""
	})
	follow.end()
	for _, b := range before {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := restarts(p, appContainer); r != b.restarts {
			t.Errorf("pod %s: app restartCount %d, was %d; signal mode restarts nothing", p.Name, r, b.restarts)
		}
	}
}

// TestWatchLeaderDeletedMidRotation: restart mode, three replicas; the
// leading watch pod is deleted once the rotation has restarted its first
// app. The standby takes the released Lease and finishes the rotation:
// every app serves the new content and restarted exactly once (not lost,
// not repeated), never two down at once.
func TestWatchLeaderDeletedMidRotation(t *testing.T) {
	c, ctx, ns := begin(t, 12*time.Minute)
	before := injectedWeb(ctx, t, c, ns, "mid", corev1.SecretTypeOpaque, opaque("v1"), 3, "restart")
	deployWatch(ctx, t, c, ns, "--settle=20s")
	until(ctx, t, "the watch's baseline", time.Minute, func() (bool, string) {
		return recordedOn(ctx, c, ns, "web") != "", "no rotated- annotation on web yet"
	})
	base := recordedOn(ctx, c, ns, "web")
	time.Sleep(15 * time.Second) // let the new pods settle (see above)
	follow := followPods(ctx, t, c, ns, "web")
	first := leader(ctx, c, ns)

	updateSecret(ctx, t, c, ns, "mid", opaque("v2"))
	until(ctx, t, "the first app restarted", 2*time.Minute, func() (bool, string) {
		follow.mu.Lock()
		defer follow.mu.Unlock()
		for _, n := range follow.wentDown {
			if n > 0 {
				return true, ""
			}
		}
		return false, "no app went down yet"
	})
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, first, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete the leading watch pod %s: %v", first, err)
	}
	t.Logf("deleted the leader %s mid-rotation", first)
	until(ctx, t, "another replica leads", time.Minute, func() (bool, string) {
		l := leader(ctx, c, ns)
		return l != "" && l != first, "holder " + l
	})
	for _, b := range before {
		if _, err := waitApp(ctx, c, ns, b.pod.Name, 3*time.Minute, "version v2", version("v2")); err != nil {
			t.Fatal(err)
		}
	}
	until(ctx, t, "the rotation recorded", 3*time.Minute, func() (bool, string) {
		r := recordedOn(ctx, c, ns, "web")
		return r != "" && r != base, "still " + r
	})
	time.Sleep(3 * time.Second)
	follow.end()
	follow.mu.Lock()
	defer follow.mu.Unlock()
	for _, b := range before {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := restarts(p, appContainer); r != b.restarts+1 {
			t.Errorf("pod %s: app restartCount %d, was %d; want exactly +1 (no lost and no repeated rotation)", p.Name, r, b.restarts)
		}
	}
	if len(follow.together) > 0 {
		t.Errorf("apps not Ready at the same time: %s", strings.Join(follow.together, "; "))
	}
}
