//go:build e2e

package reload

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/k8secrets/k8secrets/e2e/framework"
	"github.com/k8secrets/k8secrets/internal/contentid"
)

// agentStatus is GET /status of an agent (STATUS-CONTRACT.md), decoded here
// independently of the agent's types.
type agentStatus struct {
	Agent       string      `json:"agent"`
	Keyed       bool        `json:"keyed"`
	Directories []statusDir `json:"directories"`
}

type statusDir struct {
	Path        string     `json:"path"`
	Loaded      string     `json:"loaded"`
	LoadedAt    *time.Time `json:"loadedAt"`
	Seen        string     `json:"seen"`
	State       string     `json:"state"`
	Error       string     `json:"error"`
	LastAttempt *time.Time `json:"lastAttempt"`
}

// statusPod is the demo app and the agent, as a bare pod: the agent's key
// set literally in its environment (what the Job writes into the
// template), reloads going to the app's HTTP endpoint at reloadPath.
func statusPod(name, secret, tag, key, reloadPath string) *corev1.Pod {
	tmpl := demoTemplate(name, secret, tag)
	mount := corev1.VolumeMount{Name: "secret", MountPath: mountPath(secret), ReadOnly: true}
	tmpl.Spec.Volumes = []corev1.Volume{{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: secret}}}}
	tmpl.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{mount}
	tmpl.Spec.Containers = append(tmpl.Spec.Containers, corev1.Container{
		Name:            "k8secrets-agent",
		Image:           "k8secrets-agent:" + tag,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args: []string{"--watch=" + mountPath(secret), "--reload=http:http://127.0.0.1:8080" + reloadPath,
			"--min-interval=0", "--log-format=json"},
		Env:          []corev1.EnvVar{{Name: contentid.KeyEnv, Value: key}},
		Ports:        []corev1.ContainerPort{{Name: "agent", ContainerPort: 9533}},
		VolumeMounts: []corev1.VolumeMount{mount},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromInt32(9533)}},
			PeriodSeconds: 1,
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(65532)),
			RunAsGroup:               ptr(int64(65532)),
			RunAsNonRoot:             ptr(true),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	})
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: tmpl.Labels}, Spec: tmpl.Spec}
}

// TestAgentStatus: two pods mount one Secret, each with an agent keyed in
// its pod spec. One's app reloads on POST /-/reload; the other's agent
// posts to a path the app does not serve (404: every reload fails). After
// the Secret is updated, each agent's /status, read through the API
// server's pod proxy, says: for the first, loaded == HMAC-SHA256 of the
// Secret's new data under the key (computed here over the data read back
// from the API server), and its app indeed serves the new version; for the
// second, state failed with the reason, the old data's id still loaded and
// the new one seen, and its app indeed still serves the old version.
func TestAgentStatus(t *testing.T) {
	c, ctx, ns := begin(t, 6*time.Minute)
	const secret = "demo-secret"
	loadImages(ctx, t, c)
	tag := imageTag(t)
	key, err := contentid.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	createSecret(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"))
	idOf := func() string {
		t.Helper()
		s, err := c.Client.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get secret %s/%s: %v", ns, secret, err)
		}
		id, err := contentid.Of(key, s.Data)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	v1 := idOf()

	const good, failing = "reloads", "fails"
	for _, p := range []*corev1.Pod{statusPod(good, secret, tag, key, "/-/reload"), statusPod(failing, secret, tag, key, "/-/missing")} {
		if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod %s/%s: %v", ns, p.Name, err)
		}
	}
	for _, pod := range []string{good, failing} {
		waitPodReady(ctx, t, c, ns, pod)
		st := status(ctx, t, c, ns, pod)
		if !st.Keyed || len(st.Directories) != 1 {
			t.Fatalf("pod %s: GET /status = keyed %v, %d directories; want keyed, 1", pod, st.Keyed, len(st.Directories))
		}
		d := st.Directories[0]
		if d.Path != mountPath(secret) || d.Loaded != v1 || d.Seen != v1 || d.State != "loaded" || d.LoadedAt == nil {
			t.Errorf("pod %s at start: %+v; want path %s, loaded and seen %s (the Secret's data), state loaded, loadedAt set", pod, d, mountPath(secret), v1)
		}
	}

	updateSecret(ctx, t, c, ns, secret, opaque("v2"))
	v2 := idOf()
	refresh(ctx, t, c, ns, secret)

	d := waitStatus(ctx, t, c, ns, good, "loaded == the new data's id", func(s agentStatus) bool { return s.Directories[0].Loaded == v2 })
	if d.Seen != v2 || d.State != "loaded" || d.Error != "" {
		t.Errorf("pod %s after the update: %+v; want seen %s, state loaded, no error", good, d, v2)
	}
	if s, err := getApp(ctx, c, ns, good); err != nil {
		t.Error(err)
	} else if s.Version != "v2" || s.Reloads != 1 {
		t.Errorf("pod %s: the app serves %s; want version v2 after one reload (as /status says)", good, s)
	}

	d = waitStatus(ctx, t, c, ns, failing, "state failed", func(s agentStatus) bool { return s.Directories[0].State == "failed" })
	if d.Loaded != v1 || d.Seen != v2 || !strings.Contains(d.Error, "status 404") || d.LastAttempt == nil {
		t.Errorf("pod %s with a failing reload: %+v; want loaded %s (the old data), seen %s (the new), error naming status 404, lastAttempt set", failing, d, v1, v2)
	}
	if s, err := getApp(ctx, c, ns, failing); err != nil {
		t.Error(err)
	} else if s.Version != "v1" || s.Reloads != 0 {
		t.Errorf("pod %s: the app serves %s; want version v1, never reloaded (as /status says)", failing, s)
	}
}

// getStatus reads GET /status of the agent in pod through the API server's
// pod proxy (kubectl get --raw /api/v1/namespaces/NS/pods/POD:9533/proxy/status).
func getStatus(ctx context.Context, c *framework.Cluster, ns, pod string) (agentStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := c.Client.CoreV1().Pods(ns).ProxyGet("http", pod, agentPort, "/status", nil).DoRaw(ctx)
	if err != nil {
		return agentStatus{}, fmt.Errorf("GET /status of the agent in pod %s/%s: %w", ns, pod, err)
	}
	var s agentStatus
	if err := json.Unmarshal(body, &s); err != nil {
		return agentStatus{}, fmt.Errorf("GET /status of the agent in pod %s/%s: %w", ns, pod, err)
	}
	return s, nil
}

func status(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod string) agentStatus {
	t.Helper()
	s, err := getStatus(ctx, c, ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitStatus polls the agent's /status (one directory) until ok says yes,
// and returns that directory.
func waitStatus(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod, what string, ok func(agentStatus) bool) statusDir {
	t.Helper()
	deadline := time.Now().Add(refreshed)
	var last agentStatus
	var lastErr error
	for {
		s, err := getStatus(ctx, c, ns, pod)
		if err == nil && len(s.Directories) == 1 && ok(s) {
			return s.Directories[0]
		}
		last, lastErr = s, err
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("pod %s/%s: no %s after %s: last %+v, %v", ns, pod, what, refreshed, last, lastErr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitPodReady waits until every container of pod is ready.
func waitPodReady(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err == nil && podReady(p) {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("pod %s/%s not ready after 2m: %v", ns, pod, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
