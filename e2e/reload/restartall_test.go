//go:build e2e

package reload

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
)

// restartAllCode is the agent's restart-all exit code (wellknown.RestartAllExitCode).
const restartAllCode = 87

// TestRestartAllInPlace: in restart-all mode a Secret update (with refresh)
// makes the kubelet restart every container of each pod in place, once:
// same pod, the app and the agent restarted once, the app serving the new
// version, and no further restart afterwards (the rule has no crash-loop
// backoff, so a second exit for the same content would show at once).
func TestRestartAllInPlace(t *testing.T) {
	c, ctx, ns := begin(t, 6*time.Minute)
	const secret = "demo-secret"
	before := injectedWeb(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"), 2, "restart-all")
	for _, b := range before {
		a := agentOf(&b.pod)
		if len(a.RestartPolicyRules) != 1 || a.RestartPolicyRules[0].Action != corev1.ContainerRestartRuleActionRestartAllContainers ||
			a.RestartPolicyRules[0].ExitCodes == nil || len(a.RestartPolicyRules[0].ExitCodes.Values) != 1 || a.RestartPolicyRules[0].ExitCodes.Values[0] != restartAllCode {
			t.Fatalf("pod %s: agent restartPolicyRules %+v; want RestartAllContainers on exit code %d only", b.pod.Name, a.RestartPolicyRules, restartAllCode)
		}
		if b.pod.Spec.ShareProcessNamespace != nil && *b.pod.Spec.ShareProcessNamespace {
			t.Errorf("pod %s: shareProcessNamespace is set; restart-all needs no view of the app's processes", b.pod.Name)
		}
	}
	agentName := agentOf(&before[0].pod).Name
	agentBefore := map[string]int32{}
	for _, b := range before {
		agentBefore[b.pod.Name] = restarts(&b.pod, agentName)
	}

	updateSecret(ctx, t, c, ns, secret, opaque("v2"))
	refresh(ctx, t, c, ns, secret)
	var after []*corev1.Pod
	for _, b := range before {
		s, err := waitApp(ctx, c, ns, b.pod.Name, refreshed, "version v2", version("v2"))
		if err != nil {
			t.Fatal(err)
		}
		if s.PID == b.app.PID && s.Started.Equal(b.app.Started) {
			t.Errorf("pod %s: the app serves v2 from the same process; want a restarted one", b.pod.Name)
		}
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.UID != b.pod.UID {
			t.Errorf("pod %s was replaced (UID %s, was %s); want the same pod", p.Name, p.UID, b.pod.UID)
		}
		if r := restarts(p, appContainer); r != b.restarts+1 {
			t.Errorf("pod %s: app restartCount %d, was %d; want +1", p.Name, r, b.restarts)
		}
		if r := restarts(p, agentName); r != agentBefore[p.Name]+1 {
			t.Errorf("pod %s: agent restartCount %d, was %d; want +1 (every container restarts)", p.Name, r, agentBefore[p.Name])
		}
		after = append(after, p)
	}
	if t.Failed() {
		return
	}
	// Once per content: a loop would restart within seconds (no backoff).
	// Watch the pods for 30s: no restart count may move.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, a := range after {
			p, err := c.Client.CoreV1().Pods(ns).Get(ctx, a.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{appContainer, agentName} {
				if restarts(p, name) != restarts(a, name) {
					t.Fatalf("pod %s: container %s restarted again (restartCount %d, was %d) for content it had already loaded", p.Name, name, restarts(p, name), restarts(a, name))
				}
			}
		}
		time.Sleep(time.Second)
	}
}

// TestRestartAllAgentKilledNoLoop: an agent that ends for any other reason
// (here its liveness probe fails, so the kubelet kills it again and again)
// is restarted alone, with the kubelet's crash-loop backoff; the app beside
// it is never restarted: only the agent's deliberate exit code is in the
// restart rule, and an agent coming back to content it already restarted
// the pod for (its state on the emptyDir) does not ask again.
func TestRestartAllAgentKilledNoLoop(t *testing.T) {
	c, ctx, ns := begin(t, 5*time.Minute)
	const secret = "demo-secret"
	const agent = "k8secrets-agent-killed"
	createSecret(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"))
	createWorkload(ctx, t, c, ns, web, 1, secret)
	waitRolledOut(ctx, t, c, ns, web, 1)

	d, err := c.Client.AppsV1().Deployments(ns).Get(ctx, web.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d = d.DeepCopy()
	always := corev1.ContainerRestartPolicyAlways
	spec := &d.Spec.Template.Spec
	spec.Volumes = append(spec.Volumes,
		corev1.Volume{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: secret}}},
		corev1.Volume{Name: "state", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	spec.InitContainers = append(spec.InitContainers, corev1.Container{
		Name:            agent,
		Image:           "k8secrets-agent:" + imageTag(t),
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args:            []string{"--watch=" + mountPath(secret), "--reload=restart-all", "--state-dir=/state", "--log-format=json"},
		RestartPolicy:   &always,
		RestartPolicyRules: []corev1.ContainerRestartRule{{
			Action:    corev1.ContainerRestartRuleActionRestartAllContainers,
			ExitCodes: &corev1.ContainerRestartRuleOnExitCodes{Operator: corev1.ContainerRestartRuleOnExitCodesOpIn, Values: []int32{restartAllCode}},
		}},
		// Nothing listens on port 1: the kubelet kills the agent (SIGTERM,
		// exit 0) a second after each start.
		LivenessProbe: &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(1)}},
			PeriodSeconds:    1,
			FailureThreshold: 1,
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "creds", MountPath: mountPath(secret), ReadOnly: true},
			{Name: "state", MountPath: "/state"},
		},
	})
	if _, err := c.Client.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "workload=" + web.name})
		if err != nil {
			return false, nil
		}
		for i, p := range pods.Items {
			if len(p.Spec.InitContainers) == 1 && restarts(&p, agent) >= 3 && appRunning(&p) {
				pod = &pods.Items[i]
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no pod whose app runs while its agent was killed 3 times: %v", err)
	}
	t.Logf("pod %s: the agent was restarted %d times, the app %d times", pod.Name, restarts(pod, agent), restarts(pod, appContainer))
	if r := restarts(pod, appContainer); r != 0 {
		t.Errorf("pod %s: app restartCount %d while the agent was killed %d times; want 0 (only the agent restarts)", pod.Name, r, restarts(pod, agent))
	}
	for _, s := range pod.Status.InitContainerStatuses {
		if s.Name == agent && s.LastTerminationState.Terminated != nil && s.LastTerminationState.Terminated.ExitCode == restartAllCode {
			t.Errorf("pod %s: the agent exited %d, the restart-all code, with no change of content", pod.Name, restartAllCode)
		}
	}
}

// appRunning: the demo app's container is running.
func appRunning(p *corev1.Pod) bool {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == appContainer && s.State.Running != nil {
			return true
		}
	}
	return false
}
