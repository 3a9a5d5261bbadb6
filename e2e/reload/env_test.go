//go:build e2e

package reload

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

const (
	// bystander is a second container of the env app's pods, of another
	// user, that does not use the Secret: it must never be restarted.
	bystander    = "bystander"
	bystanderUID = 2000
	// versionEnv is the environment variable the app takes the Secret's
	// (non-secret) version key through, and serves as envVersion.
	versionEnv = "version"
)

// envTemplate is the demo app taking the Secret through env (how: a
// secretKeyRef per key, or envFrom), reading no Secret files, beside a
// bystander container of another user.
func envTemplate(secret, how string) corev1.PodTemplateSpec {
	tmpl := demoTemplate(web.name, secret, "")
	app := &tmpl.Spec.Containers[0]
	app.Args = []string{"--secret-dir=/nonexistent", "--env-version=" + versionEnv}
	ref := corev1.LocalObjectReference{Name: secret}
	switch how {
	case "secretKeyRef":
		app.Env = []corev1.EnvVar{
			{Name: versionEnv, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: ref, Key: "version"}}},
			{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: ref, Key: "password"}}},
		}
	case "envFrom":
		app.EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: ref}}}
	}
	other := *app.DeepCopy()
	other.Name = bystander
	other.Env, other.EnvFrom = nil, nil
	other.Args = []string{"--secret-dir=/nonexistent", "--listen=:8081"}
	other.Ports = []corev1.ContainerPort{{Name: "http-b", ContainerPort: 8081}}
	other.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8081)}}, PeriodSeconds: 1}
	other.SecurityContext.RunAsUser = ptr(int64(bystanderUID))
	other.SecurityContext.RunAsGroup = ptr(int64(bystanderUID))
	tmpl.Spec.Containers = append(tmpl.Spec.Containers, other)
	return tmpl
}

// envApp is what the demo app serves about the env value it started with.
type envApp struct {
	EnvVersion string    `json:"envVersion"`
	PID        int       `json:"pid"`
	Started    time.Time `json:"started"`
}

func getEnvApp(ctx context.Context, c *framework.Cluster, ns, pod string) (envApp, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := c.Client.CoreV1().Pods(ns).ProxyGet("http", pod, "8080", "/", nil).DoRaw(ctx)
	if err != nil {
		return envApp{}, fmt.Errorf("GET / of the app in pod %s/%s: %w", ns, pod, err)
	}
	var s envApp
	err = json.Unmarshal(body, &s)
	return s, err
}

// waitEnvApp polls the app until it serves the env version want.
func waitEnvApp(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod, want string) envApp {
	t.Helper()
	deadline := time.Now().Add(refreshed)
	var last envApp
	var err error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if last, err = getEnvApp(ctx, c, ns, pod); err == nil && last.EnvVersion == want {
			return last
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("pod %s: the app's env version is %q after %s (%v); want %q", pod, last.EnvVersion, refreshed, err, want)
	return last
}

// readyWatch follows the Ready condition of the pods matching sel and
// records any moment when none of them was Ready.
type readyWatch struct {
	mu       sync.Mutex
	ready    map[string]bool
	notReady map[string]int // NotReady observations per pod
	allDown  []string
	done     chan struct{}
}

func watchReady(ctx context.Context, t *testing.T, c *framework.Cluster, ns, sel string) *readyWatch {
	t.Helper()
	list, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	w := &readyWatch{ready: map[string]bool{}, notReady: map[string]int{}, done: make(chan struct{})}
	for i := range list.Items {
		w.ready[list.Items[i].Name] = podReady(&list.Items[i])
	}
	wi, err := c.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer wi.Stop()
		for ev := range wi.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			w.mu.Lock()
			r := podReady(p) && ev.Type != watch.Deleted
			if !r {
				w.notReady[p.Name]++
			}
			w.ready[p.Name] = r
			up := 0
			for _, ok := range w.ready {
				if ok {
					up++
				}
			}
			if up == 0 {
				w.allDown = append(w.allDown, fmt.Sprintf("%s: no pod Ready (%s %s)", time.Now().Format(time.TimeOnly), ev.Type, p.Name))
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// TestEnvSecretKeyRefRestartedInPlace and TestEnvFromRestartedInPlace: an
// app that takes the Secret through env is injected with no mount of it;
// a Secret update plus refresh restarts exactly its container in place in
// each of the two pods, one pod at a time, and its new process has the new
// value; the bystander container and the pods stay. Then a rollout restart
// of the same Deployment, for the README's comparison.
func TestEnvSecretKeyRefRestartedInPlace(t *testing.T) { envRestartedInPlace(t, "secretKeyRef") }

func TestEnvFromRestartedInPlace(t *testing.T) { envRestartedInPlace(t, "envFrom") }

func envRestartedInPlace(t *testing.T, how string) {
	c, ctx, ns := begin(t, 8*time.Minute)
	const secret = "env-secret"
	createSecret(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"))
	loadImages(ctx, t, c)
	tmpl := envTemplate(secret, how)
	tmpl.Spec.Containers[0].Image = "k8secrets-demo:" + imageTag(t)
	tmpl.Spec.Containers[1].Image = tmpl.Spec.Containers[0].Image
	replicas := int32(2)
	_, err := c.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: web.name},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: tmpl.Labels}, Template: tmpl}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitRolledOut(ctx, t, c, ns, web, 2)
	inject(ctx, t, c, ns, secret, "restart")
	before := waitRolledOut(ctx, t, c, ns, web, 2)

	// The injection: the Secret in the agent only, the marker in the agent
	// and the app only, the agent as the app's user.
	for i := range before {
		p := &before[i]
		a := agentOf(p)
		if a == nil {
			t.Fatalf("pod %s: no agent", p.Name)
		}
		vols := map[string]string{}
		for _, v := range p.Spec.Volumes {
			switch {
			case v.Secret != nil && v.Secret.SecretName == secret:
				vols[v.Name] = "secret"
			case v.EmptyDir != nil && strings.HasSuffix(v.Name, "-target"):
				vols[v.Name] = "marker"
			}
		}
		mounted := map[string][]string{}
		for _, ct := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
			for _, m := range ct.VolumeMounts {
				if kind := vols[m.Name]; kind != "" {
					mounted[kind] = append(mounted[kind], ct.Name)
				}
			}
		}
		if got := strings.Join(mounted["secret"], ","); got != a.Name {
			t.Errorf("pod %s: the Secret is mounted in %q; want the agent %s only", p.Name, got, a.Name)
		}
		if got := strings.Join(mounted["marker"], ","); got != a.Name+","+appContainer {
			t.Errorf("pod %s: the target marker is mounted in %q; want the agent and %s only", p.Name, got, appContainer)
		}
		if a.SecurityContext == nil || a.SecurityContext.RunAsUser == nil || *a.SecurityContext.RunAsUser != appUID {
			t.Errorf("pod %s: the agent does not run as the env app's user %d", p.Name, appUID)
		}
		if s := waitEnvApp(ctx, t, c, ns, p.Name, "v1"); s.PID == 0 {
			t.Errorf("pod %s: the app serves no PID", p.Name)
		}
	}
	if t.Failed() {
		return
	}
	apps := map[string]envApp{}
	for _, p := range before {
		s, err := getEnvApp(ctx, c, ns, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		apps[p.Name] = s
	}

	rw := watchReady(ctx, t, c, ns, "workload="+web.name)
	start := time.Now()
	updateSecret(ctx, t, c, ns, secret, opaque("v2"))
	refresh(ctx, t, c, ns, secret)
	inPlace := time.Since(start)
	for _, b := range before {
		s := waitEnvApp(ctx, t, c, ns, b.Name, "v2")
		if s.PID == apps[b.Name].PID && s.Started.Equal(apps[b.Name].Started) {
			t.Errorf("pod %s: the app has v2 in the same process; want a new one", b.Name)
		}
	}
	// Exactly once: a second restart for the same content would come
	// within the agent's jitter (5 s) of the first.
	time.Sleep(10 * time.Second)
	for i := range before {
		b := &before[i]
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, b.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("pod %s: %v (want the same pod)", b.Name, err)
		}
		if p.UID != b.UID {
			t.Errorf("pod %s was replaced (UID %s, was %s); want the same pod", p.Name, p.UID, b.UID)
		}
		if r := restarts(p, appContainer); r != restarts(b, appContainer)+1 {
			t.Errorf("pod %s: app restartCount %d, was %d; want +1", p.Name, r, restarts(b, appContainer))
		}
		if r := restarts(p, bystander); r != 0 {
			t.Errorf("pod %s: bystander restartCount %d; want 0 (it does not use the Secret)", p.Name, r)
		}
		if a := agentOf(p); restarts(p, a.Name) != restarts(b, a.Name) {
			t.Errorf("pod %s: agent restartCount %d, was %d", p.Name, restarts(p, a.Name), restarts(b, a.Name))
		}
	}
	rw.mu.Lock()
	allDown, notReady := rw.allDown, fmt.Sprint(rw.notReady)
	for _, b := range before {
		// The watch must have seen each restart, or it proves nothing.
		if rw.notReady[b.Name] == 0 {
			t.Errorf("the pod watch never saw pod %s not Ready; it missed its restart", b.Name)
		}
	}
	rw.mu.Unlock()
	t.Logf("NotReady observations per pod during the refresh: %s", notReady)
	if len(allDown) > 0 {
		t.Errorf("both replicas were not Ready at once: %s", strings.Join(allDown, "; "))
	}
	if t.Failed() {
		return
	}

	// The comparison: a rollout restart (what Reloader does on a change).
	start = time.Now()
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, start.Format(time.RFC3339))
	if _, err := c.Client.AppsV1().Deployments(ns).Patch(ctx, web.name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	after := waitRolledOut(ctx, t, c, ns, web, 2)
	rollout := time.Since(start)
	replaced := 0
	for _, p := range after {
		replaced++
		for _, b := range before {
			if p.UID == b.UID {
				replaced--
			}
		}
	}
	t.Logf("%s: Secret update + refresh, app restarted in place: %.1fs, pods replaced 0 of 2; rollout restart: %.1fs, pods replaced %d of 2",
		how, inPlace.Seconds(), rollout.Seconds(), replaced)
}
