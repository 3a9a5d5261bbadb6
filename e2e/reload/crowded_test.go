//go:build e2e

package reload

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

// The other containers of a crowded pod: both run the demo app (which
// counts the SIGHUPs it gets and serves the count) on a port of their own,
// and neither mounts the Secret.
const (
	// proxyContainer runs as another user, as a service-mesh proxy does.
	proxyContainer = "proxy"
	proxyUID       = 1337
	proxyPort      = "8081"
	// peerContainer runs as the app's user: only the targeting rule, not
	// the kernel's EPERM, keeps the agent's signals away from it.
	peerContainer = "peer"
	peerPort      = "8082"
)

// crowdedTemplate is the demo app's pod with an exec readiness probe (its
// processes enter the app's container with parent PID 0 every second) and
// the proxy and peer containers beside it.
func crowdedTemplate(secret, tag string) corev1.PodTemplateSpec {
	tmpl := demoTemplate(web.name, secret, tag)
	app := &tmpl.Spec.Containers[0]
	app.ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"/k8secrets-demo", "--probe"}}},
		PeriodSeconds: 1, TimeoutSeconds: 2,
	}
	other := func(name, port string, uid int64) corev1.Container {
		c := app.DeepCopy()
		c.Name = name
		c.Args = []string{"--secret-dir=/nonexistent", "--listen=:" + port}
		c.Ports = []corev1.ContainerPort{{Name: name, ContainerPort: int32(atoi(port))}}
		c.ReadinessProbe = nil
		c.SecurityContext.RunAsUser = ptr(uid)
		c.SecurityContext.RunAsGroup = ptr(uid)
		return *c
	}
	tmpl.Spec.Containers = append(tmpl.Spec.Containers, other(proxyContainer, proxyPort, proxyUID), other(peerContainer, peerPort, appUID))
	return tmpl
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// crowdedWeb creates the Secret and the crowded Deployment "web" (one
// replica), injects the Secret into the app container only (as the Job
// never sees a proxy a webhook adds), and returns the injected pod.
func crowdedWeb(ctx context.Context, t *testing.T, c *framework.Cluster, ns, secret, reload string) seen {
	t.Helper()
	createSecret(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"))
	loadImages(ctx, t, c)
	tmpl := crowdedTemplate(secret, imageTag(t))
	one := int32(1)
	_, err := c.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: web.name},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: tmpl.Labels}, Template: tmpl}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create %s in %s: %v", web, ns, err)
	}
	waitRolledOut(ctx, t, c, ns, web, 1)
	runJob(ctx, t, c, ns, "inject", "-l", selector, "--secret", secret, "--container", appContainer,
		"--agent-image=k8secrets-agent:"+imageTag(t), "--reload="+reload, "--timeout=3m")
	b := injectedPods(ctx, t, c, ns, secret, reload, "v1", map[workload]int{web: 1})[0]
	for _, name := range []string{proxyContainer, peerContainer} {
		for _, ct := range b.pod.Spec.Containers {
			if ct.Name != name {
				continue
			}
			for _, m := range ct.VolumeMounts {
				if strings.Contains(m.MountPath, secret) {
					t.Fatalf("pod %s: container %s mounts the Secret at %s; want it only in %s", b.pod.Name, name, m.MountPath, appContainer)
				}
			}
		}
	}
	return b
}

// getDemo is getApp for a demo instance on another port.
func getDemo(ctx context.Context, c *framework.Cluster, ns, pod, port string) (appState, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := c.Client.CoreV1().Pods(ns).ProxyGet("http", pod, port, "/", nil).DoRaw(ctx)
	if err != nil {
		return appState{}, fmt.Errorf("GET / of port %s in pod %s/%s: %w", port, ns, pod, err)
	}
	var s appState
	if err := json.Unmarshal(body, &s); err != nil {
		return appState{}, fmt.Errorf("GET / of port %s in pod %s/%s: %w", port, ns, pod, err)
	}
	return s, nil
}

// checkBystanders checks that neither the proxy nor the peer restarted
// (their restartCount in b.pod) or got a SIGHUP (their own count).
func checkBystanders(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, b seen, p *corev1.Pod) {
	t.Helper()
	for _, o := range []struct{ name, port string }{{proxyContainer, proxyPort}, {peerContainer, peerPort}} {
		if r, was := restarts(p, o.name), restarts(&b.pod, o.name); r != was {
			t.Errorf("pod %s: container %s restartCount %d, was %d; want no restart", p.Name, o.name, r, was)
		}
		s, err := getDemo(ctx, c, ns, p.Name, o.port)
		if err != nil {
			t.Error(err)
		} else if s.Reloads != 0 {
			t.Errorf("pod %s: container %s got %d SIGHUPs; want none", p.Name, o.name, s.Reloads)
		}
	}
}

// checkNoFailedReload checks that the agent counts no failed reload (an
// EPERM on another container's process used to be retried forever).
func checkNoFailedReload(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod string) {
	t.Helper()
	n, err := agentMetric(ctx, c, ns, pod, "k8secrets_agent_reloads_total", `result="failure"`)
	if err != nil {
		t.Error(err)
	} else if n != 0 {
		t.Errorf("pod %s: agent counts %v failed reloads; want 0", pod, n)
	}
}

// TestCrowdedPodRestart: in restart mode, beside a proxy of another user,
// a peer of the app's user and an exec probe, one Secret update restarts
// the app exactly once and nothing else, and nothing more happens in the
// next two minutes (the agent used to retry the proxy's EPERM and restart
// the app again every ≤ 30 s).
func TestCrowdedPodRestart(t *testing.T) {
	c, ctx, ns := begin(t, 10*time.Minute)
	const secret = "demo-secret"
	b := crowdedWeb(ctx, t, c, ns, secret, "restart")

	updateSecret(ctx, t, c, ns, secret, opaque("v2"))
	refresh(ctx, t, c, ns, secret)
	s, err := waitApp(ctx, c, ns, b.pod.Name, refreshed+10*time.Second, "version v2", version("v2"))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Started.After(b.app.Started) || s.Reloads != 0 {
		t.Errorf("pod %s: app serves %s; want a new process that loaded v2 at start", b.pod.Name, s)
	}
	check := func(when string) {
		t.Helper()
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.UID != b.pod.UID {
			t.Fatalf("%s: pod %s was replaced", when, p.Name)
		}
		if r := restarts(p, appContainer); r != b.restarts+1 {
			t.Errorf("%s: pod %s: app restartCount %d, was %d; want exactly +1", when, p.Name, r, b.restarts)
		}
		checkBystanders(ctx, t, c, ns, b, p)
		if cur, err := getApp(ctx, c, ns, p.Name); err != nil {
			t.Error(err)
		} else if cur.PID != s.PID || !cur.Started.Equal(s.Started) {
			t.Errorf("%s: pod %s: app serves %s; want the process restarted once (%s)", when, p.Name, cur, s)
		}
		checkOneReload(ctx, t, c, ns, p.Name, "restart")
		checkNoFailedReload(ctx, t, c, ns, p.Name)
	}
	check("after the update")
	if t.Failed() {
		return
	}
	// Two minutes: four times the agent's longest retry backoff.
	end := time.Now().Add(2 * time.Minute)
	for time.Now().Before(end) && !t.Failed() {
		time.Sleep(10 * time.Second)
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := restarts(p, appContainer); r != b.restarts+1 {
			t.Fatalf("pod %s: app restartCount %d %s after the update; want %d (one restart)", p.Name, r, time.Since(s.Started).Round(time.Second), b.restarts+1)
		}
	}
	check("two minutes later")
}

// Two more bystanders of the signal test, both demo instances of the
// app's user: a long `kubectl exec` session in the app's container (its
// mount namespace, parent PID 0, started after the app) and an ephemeral
// debug container.
const (
	execPort  = "8083"
	debugPort = "8084"
)

// addBystanders starts the exec session and the debug container in pod and
// waits until both serve; the exec session ends with ctx.
func addBystanders(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod string) {
	t.Helper()
	demoArgs := func(port string) []string { return []string{"--secret-dir=/nonexistent", "--listen=:" + port} }
	go func() {
		_, _, _ = c.Exec(ctx, ns, pod, appContainer, append([]string{"/k8secrets-demo"}, demoArgs(execPort)...)...)
	}()
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p = p.DeepCopy()
	p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
		Name: "debugger", Image: "k8secrets-demo:" + imageTag(t), ImagePullPolicy: corev1.PullIfNotPresent, Args: demoArgs(debugPort),
		SecurityContext: &corev1.SecurityContext{RunAsUser: ptr(int64(appUID)), RunAsGroup: ptr(int64(appUID)), RunAsNonRoot: ptr(true)},
	}})
	if _, err := c.Client.CoreV1().Pods(ns).UpdateEphemeralContainers(ctx, pod, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("add a debug container to pod %s/%s: %v", ns, pod, err)
	}
	for _, port := range []string{execPort, debugPort} {
		deadline := time.Now().Add(time.Minute)
		for {
			_, err := getDemo(ctx, c, ns, pod, port)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the bystander on port %s does not serve: %v", port, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// TestCrowdedPodSignal: in signal mode, in the same crowded pod plus a
// `kubectl exec` session in the app's container and an ephemeral debug
// container, the app gets exactly one SIGHUP, every other process none, and
// no reload fails or repeats.
func TestCrowdedPodSignal(t *testing.T) {
	c, ctx, ns := begin(t, 8*time.Minute)
	const secret = "demo-secret"
	b := crowdedWeb(ctx, t, c, ns, secret, "signal:SIGHUP")
	execCtx, endExec := context.WithCancel(ctx)
	defer endExec()
	addBystanders(execCtx, t, c, ns, b.pod.Name)

	updateSecret(ctx, t, c, ns, secret, opaque("v2"))
	refresh(ctx, t, c, ns, secret)
	checkReloadedInPlace(ctx, t, c, ns, "v2", []seen{b})
	if t.Failed() {
		return
	}
	// Longer than the agent's longest retry backoff (30s): a failed
	// signal would have been retried by now.
	time.Sleep(35 * time.Second)
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := getApp(ctx, c, ns, p.Name); err != nil {
		t.Error(err)
	} else if s.Reloads != b.app.Reloads+1 || s.PID != b.app.PID {
		t.Errorf("pod %s: app serves %s; want one SIGHUP in the same process (pid %d)", p.Name, s, b.app.PID)
	}
	if r := restarts(p, appContainer); r != b.restarts {
		t.Errorf("pod %s: app restartCount %d, was %d; want no restart", p.Name, r, b.restarts)
	}
	checkBystanders(ctx, t, c, ns, b, p)
	for _, o := range []struct{ name, port string }{{"the kubectl exec session", execPort}, {"the debug container", debugPort}} {
		if s, err := getDemo(ctx, c, ns, p.Name, o.port); err != nil {
			t.Errorf("%s: %v", o.name, err)
		} else if s.Reloads != 0 {
			t.Errorf("pod %s: %s got %d SIGHUPs; want none", p.Name, o.name, s.Reloads)
		}
	}
	checkOneReload(ctx, t, c, ns, p.Name, "signal")
	checkNoFailedReload(ctx, t, c, ns, p.Name)
}

// setImage patches the image of the pod's container (or native sidecar)
// name: the one field of a running pod's containers that may change.
func setImage(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod, name, image string) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"initContainers": []map[string]string{{"name": name, "image": image}}}})
	if _, err := c.Client.CoreV1().Pods(ns).Patch(ctx, pod, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("set the image of %s in pod %s/%s to %s: %v", name, ns, pod, image, err)
	}
}

// waitContainer waits until the status of the pod's container name
// satisfies ok.
func waitContainer(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod, name, what string, ok func(corev1.ContainerStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			if s.Name == name && ok(s) {
				return
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("pod %s/%s: container %s: no %s after 2m", ns, pod, name, what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestAgentDownDuringUpdate: the agent's container crashes (its image is
// swapped for one that exits on the agent's flags) while the Secret is
// updated and refreshed; when the agent comes back, it finds the content
// newer than the app's process and reloads it, with no further update: in
// signal mode one SIGHUP to the same process, in restart mode one restart.
func TestAgentDownDuringUpdate(t *testing.T) {
	for _, reload := range []string{"signal:SIGHUP", "restart"} {
		t.Run(reload, func(t *testing.T) { agentDownDuringUpdate(t, reload) })
	}
}

func agentDownDuringUpdate(t *testing.T, reload string) {
	c, ctx, ns := begin(t, 8*time.Minute)
	const secret = "demo-secret"
	b := injectedWeb(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"), 1, reload)[0]
	agent := agentOf(&b.pod)
	pod := b.pod.Name

	// The demo binary refuses the agent's flags: exit 2, crash-looping.
	setImage(ctx, t, c, ns, pod, agent.Name, "k8secrets-demo:"+imageTag(t))
	waitContainer(ctx, t, c, ns, pod, agent.Name, "crash of the swapped image", func(s corev1.ContainerStatus) bool {
		last := s.LastTerminationState.Terminated
		return s.State.Running == nil && last != nil && last.ExitCode == 2 && strings.Contains(s.Image, "k8secrets-demo")
	})
	updateSecret(ctx, t, c, ns, secret, opaque("v2"))
	refresh(ctx, t, c, ns, secret)
	// refresh makes the kubelet rewrite the volume within about a second.
	time.Sleep(5 * time.Second)
	if s, err := getApp(ctx, c, ns, pod); err != nil || s.Version != "v1" {
		t.Fatalf("pod %s: app serves %s, %v while the agent is down; want v1", pod, s, err)
	}

	setImage(ctx, t, c, ns, pod, agent.Name, agent.Image)
	waitContainer(ctx, t, c, ns, pod, agent.Name, "agent running again", func(s corev1.ContainerStatus) bool {
		return s.State.Running != nil && strings.Contains(s.Image, "k8secrets-agent")
	})
	action := "signal"
	if reload == "restart" {
		action = "restart"
		// The agent waits up to --restart-jitter (5s) before the restart.
		s, err := waitApp(ctx, c, ns, pod, refreshed+10*time.Second, "version v2", version("v2"))
		if err != nil {
			t.Fatal(err)
		}
		if !s.Started.After(b.app.Started) || s.Reloads != 0 {
			t.Errorf("pod %s: app serves %s; want a new process that loaded v2 at start", pod, s)
		}
		// The kubelet reports the restart shortly after the new process
		// serves.
		waitContainer(ctx, t, c, ns, pod, appContainer, "restart", func(st corev1.ContainerStatus) bool { return st.RestartCount > b.restarts })
		time.Sleep(10 * time.Second) // a second restart would follow within the jitter
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := restarts(p, appContainer); r != b.restarts+1 {
			t.Errorf("pod %s: app restartCount %d, was %d; want +1", pod, r, b.restarts)
		}
	} else {
		checkReloadedInPlace(ctx, t, c, ns, "v2", []seen{b})
	}
	checkOneReload(ctx, t, c, ns, pod, action)
	// The agent that came back saw the update at its start, not as a change.
	if n, err := agentMetric(ctx, c, ns, pod, "k8secrets_agent_content_changes_total"); err != nil {
		t.Error(err)
	} else if n != 0 {
		t.Errorf("pod %s: the restarted agent counts %v content changes; want 0 (the update came while it was down)", pod, n)
	}
	logs, err := c.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: agent.Name}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("logs of the agent in pod %s: %v", pod, err)
	}
	if !strings.Contains(string(logs), "newer than the app") {
		t.Errorf("the agent in pod %s did not log why it reloaded at start:\n%s", pod, logs)
	}
}

// TestRestartRefreshNeverAllDown: restart mode with refresh on three
// replicas; a watch of the pods, started before the update, sees every
// app container go not-Ready once and never two at the same time.
func TestRestartRefreshNeverAllDown(t *testing.T) {
	c, ctx, ns := begin(t, 8*time.Minute)
	const secret = "demo-secret"
	const replicas = 3
	before := injectedWeb(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"), replicas, "restart")
	// Any change to a pod, its own status included, makes its kubelet
	// resync it and so deliver the update: let the new pods settle, so
	// that what delivers it is refresh (as TestRefreshDeliversAtOnce).
	time.Sleep(15 * time.Second)

	list, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "workload=" + web.name})
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: "workload=" + web.name, ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	down := map[string]bool{}    // pod -> app container not Ready now
	wentDown := map[string]int{} // pod -> times seen going not-Ready
	var together []string        // moments two or more were down
	done := make(chan struct{})
	go func() {
		defer close(done)
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
			mu.Lock()
			if !ready && !down[p.Name] {
				wentDown[p.Name]++
			}
			if ready == down[p.Name] {
				t.Logf("%s pod %s: app Ready %v", time.Now().Format("15:04:05.000"), p.Name, ready)
			}
			down[p.Name] = !ready
			var now []string
			for name, d := range down {
				if d {
					now = append(now, name)
				}
			}
			if len(now) > 1 {
				together = append(together, fmt.Sprintf("%s at rv %s", strings.Join(now, ", "), p.ResourceVersion))
			}
			mu.Unlock()
		}
	}()

	t.Logf("%s update and refresh", time.Now().Format("15:04:05.000"))
	updateSecret(ctx, t, c, ns, secret, opaque("v2"))
	refresh(ctx, t, c, ns, secret)
	for _, b := range before {
		if _, err := waitApp(ctx, c, ns, b.pod.Name, refreshed, "version v2", version("v2")); err != nil {
			t.Fatal(err)
		}
	}
	// The last status update of the last pod reaches the watch.
	time.Sleep(3 * time.Second)
	w.Stop()
	<-done

	mu.Lock()
	defer mu.Unlock()
	for _, b := range before {
		if wentDown[b.pod.Name] != 1 {
			t.Errorf("pod %s: the watch saw its app go not-Ready %d times; want once (one restart)", b.pod.Name, wentDown[b.pod.Name])
		}
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := restarts(p, appContainer); r != b.restarts+1 {
			t.Errorf("pod %s: app restartCount %d, was %d; want +1", p.Name, r, b.restarts)
		}
	}
	if len(together) > 0 {
		t.Errorf("app containers were not Ready at the same time: %s", strings.Join(together, "; "))
	}
}
