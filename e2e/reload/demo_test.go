//go:build e2e

package reload

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

const (
	// appContainer is the demo app's container in every workload.
	appContainer = "demo"
	// appUID is the demo app's user; the Job gives it to the agent in signal
	// and restart mode, so that the agent may signal the app.
	appUID = 1000
	// agentPrefix starts the name of the agent container the Job adds
	// (k8secrets-agent-<id>).
	agentPrefix = "k8secrets-agent-"
	// agentPort is where the agent serves /metrics (the Job's default).
	agentPort = "9533"
	// injectedLabel marks a workload the Job injected.
	injectedLabel = "k8secrets.io/injected"
	// selector matches the pods of every demo workload of a test.
	selector = "app=demo"
)

// mountPath is the Job's default mount path for a Secret, which the demo app
// is told to read.
func mountPath(secret string) string { return "/var/run/secrets/k8secrets/" + secret }

// imageTag is the tag of the k8secrets-agent and k8secrets-demo images loaded
// into the cluster.
func imageTag(t *testing.T) string {
	t.Helper()
	tag := os.Getenv("E2E_IMAGE_TAG")
	if tag == "" {
		t.Fatal("E2E_IMAGE_TAG is not set: build and load the images (make e2e does both) and set it to their tag")
	}
	return tag
}

var images struct {
	sync.Once
	err error
}

// loadImages loads the agent and demo images of E2E_IMAGE_TAG from the local
// Docker into the kind cluster, once: make e2e loaded them already, but the
// cluster may have been recreated since (other packages and people share it).
// On a cluster that did not come from e2e/cluster, the images must be there.
func loadImages(ctx context.Context, t *testing.T, c *framework.Cluster) {
	t.Helper()
	tag := imageTag(t)
	images.Do(func() {
		err := c.LoadImages(ctx, "k8secrets-agent:"+tag, "k8secrets-demo:"+tag)
		if err != nil && !errors.Is(err, framework.ErrNotKind) {
			images.err = err
		}
	})
	if images.err != nil {
		t.Fatal(images.err)
	}
}

var job struct {
	sync.Once
	path, tmp string
	err       error
}

// jobBinary returns the k8secrets-job binary: $E2E_BIN/k8secrets-job (or
// $E2E_BIN/bin/k8secrets-job), else one built from ../job once.
func jobBinary(t *testing.T) string {
	t.Helper()
	job.Do(func() {
		if d := os.Getenv("E2E_BIN"); d != "" {
			for _, p := range []string{filepath.Join(d, "k8secrets-job"), filepath.Join(d, "bin", "k8secrets-job")} {
				if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
					job.path = p
					return
				}
			}
			job.err = fmt.Errorf("E2E_BIN=%s holds neither k8secrets-job nor bin/k8secrets-job", d)
			return
		}
		job.tmp, job.err = os.MkdirTemp("", "k8secrets-reload-e2e-")
		if job.err != nil {
			return
		}
		job.path = filepath.Join(job.tmp, "k8secrets-job")
		// The flags of make build, so that its build cache serves.
		cmd := exec.Command("go", "build", "-trimpath", "-o", job.path, "./job")
		cmd.Dir = filepath.Join("..", "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			job.err = fmt.Errorf("build k8secrets-job: %v\n%s", err, out)
		}
	})
	if job.err != nil {
		t.Fatal(job.err)
	}
	return job.path
}

// runJob runs k8secrets-job in ns with the cluster's kubeconfig and returns
// its report. The Job never prints Secret values, so its output may be shown.
func runJob(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, args ...string) string {
	t.Helper()
	stdout, stderr, code := runJobCode(ctx, t, c, ns, args...)
	if code != 0 {
		t.Fatalf("k8secrets-job %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

// runJobCode runs k8secrets-job as runJob does, and returns its output and
// exit code rather than failing on a non-zero one.
func runJobCode(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	args = append(args, "--kubeconfig", c.Kubeconfig, "-n", ns)
	cmd := exec.CommandContext(ctx, jobBinary(t), args...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	t.Logf("k8secrets-job %s: %.1fs", args[0], time.Since(start).Seconds())
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("k8secrets-job %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), code
}

func inject(ctx context.Context, t *testing.T, c *framework.Cluster, ns, secret, reload string) {
	t.Helper()
	runJob(ctx, t, c, ns, "inject", "-l", selector, "--secret", secret,
		"--agent-image=k8secrets-agent:"+imageTag(t), "--reload="+reload, "--timeout=3m")
}

func refresh(ctx context.Context, t *testing.T, c *framework.Cluster, ns, secret string) {
	t.Helper()
	// Without --wait: these tests watch each app themselves, some with a
	// reload meant to fail or an agent down (e2e/job/verify_test.go proves
	// the wait).
	runJob(ctx, t, c, ns, "refresh", "--secret", secret, "--wait=false")
}

// randomValue is a fresh secret value; tests never print it.
func randomValue() []byte {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return []byte(hex.EncodeToString(b))
}

func createSecret(ctx context.Context, t *testing.T, c *framework.Cluster, ns, name string, typ corev1.SecretType, data map[string][]byte) {
	t.Helper()
	_, err := c.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Type:       typ,
		Data:       data,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create secret %s/%s: %v", ns, name, err)
	}
	guardSecret(t, c, ns, data)
}

// guardSecret fails the test if the values of data that are secret (not
// the "version" marker, not a public certificate) reach an Event or a
// k8secrets container's log in ns.
func guardSecret(t *testing.T, c *framework.Cluster, ns string, data map[string][]byte) {
	var values [][]byte
	for k, v := range data {
		if k != "version" && k != corev1.TLSCertKey && k != "ca.crt" {
			values = append(values, v)
		}
	}
	c.GuardSecrets(t, ns, values...)
}

// updateSecret replaces the Secret's data with data (its "version" key says
// what the app should load next).
func updateSecret(ctx context.Context, t *testing.T, c *framework.Cluster, ns, name string, data map[string][]byte) {
	t.Helper()
	s, err := c.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get secret %s/%s: %v", ns, name, err)
	}
	s = s.DeepCopy()
	s.Data = data
	if _, err := c.Client.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update secret %s/%s to version %s: %v", ns, name, data["version"], err)
	}
	guardSecret(t, c, ns, data)
}

// opaque is the data of an Opaque Secret at a version, with a fresh password.
func opaque(version string) map[string][]byte {
	return map[string][]byte{"version": []byte(version), "password": randomValue()}
}

// demoTemplate is the demo app's pod: labelled app=demo and workload=NAME,
// reading the Secret from the Job's default mount path, running as appUID
// (the agent runs as the app's user to be allowed to signal it).
func demoTemplate(name, secret, tag string) corev1.PodTemplateSpec {
	grace := int64(5)
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "demo", "workload": name}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:            appContainer,
				Image:           "k8secrets-demo:" + tag,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Args:            []string{"--secret-dir=" + mountPath(secret)},
				Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
					PeriodSeconds: 1,
				},
				SecurityContext: &corev1.SecurityContext{
					RunAsUser:                ptr(int64(appUID)),
					RunAsGroup:               ptr(int64(appUID)),
					RunAsNonRoot:             ptr(true),
					ReadOnlyRootFilesystem:   ptr(true),
					AllowPrivilegeEscalation: ptr(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
					SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
				},
			}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// workload is one demo workload of a test.
type workload struct{ kind, name string }

func (w workload) String() string { return w.kind + "/" + w.name }

func createWorkload(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, w workload, replicas int32, secret string) {
	t.Helper()
	loadImages(ctx, t, c)
	tmpl := demoTemplate(w.name, secret, imageTag(t))
	sel := &metav1.LabelSelector{MatchLabels: tmpl.Labels}
	meta := metav1.ObjectMeta{Name: w.name}
	var err error
	switch w.kind {
	case "Deployment":
		_, err = c.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: meta,
			Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: sel, Template: tmpl}}, metav1.CreateOptions{})
	case "StatefulSet":
		_, err = c.Client.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{ObjectMeta: meta,
			Spec: appsv1.StatefulSetSpec{Replicas: &replicas, Selector: sel, Template: tmpl, ServiceName: w.name}}, metav1.CreateOptions{})
	case "DaemonSet":
		_, err = c.Client.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{ObjectMeta: meta,
			Spec: appsv1.DaemonSetSpec{Selector: sel, Template: tmpl}}, metav1.CreateOptions{})
	default:
		t.Fatalf("unknown workload kind %s", w.kind)
	}
	if err != nil {
		t.Fatalf("create %s in %s: %v", w, ns, err)
	}
}

// getWorkload returns the workload's labels, pod template and whether its
// controller has finished rolling it out (every replica updated and ready),
// with what it still waits for.
func getWorkload(ctx context.Context, c *framework.Cluster, ns string, w workload) (labels map[string]string, tmpl corev1.PodTemplateSpec, done bool, waiting string, err error) {
	switch w.kind {
	case "Deployment":
		d, err := c.Client.AppsV1().Deployments(ns).Get(ctx, w.name, metav1.GetOptions{})
		if err != nil {
			return nil, tmpl, false, "", err
		}
		want := *d.Spec.Replicas
		s := d.Status
		done = s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.Replicas == want && s.AvailableReplicas == want
		return d.Labels, d.Spec.Template, done, fmt.Sprintf("replicas %d updated %d available %d of %d", s.Replicas, s.UpdatedReplicas, s.AvailableReplicas, want), nil
	case "StatefulSet":
		d, err := c.Client.AppsV1().StatefulSets(ns).Get(ctx, w.name, metav1.GetOptions{})
		if err != nil {
			return nil, tmpl, false, "", err
		}
		want := *d.Spec.Replicas
		s := d.Status
		done = s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.ReadyReplicas == want && s.Replicas == want && s.CurrentRevision == s.UpdateRevision
		return d.Labels, d.Spec.Template, done, fmt.Sprintf("replicas %d updated %d ready %d of %d", s.Replicas, s.UpdatedReplicas, s.ReadyReplicas, want), nil
	case "DaemonSet":
		d, err := c.Client.AppsV1().DaemonSets(ns).Get(ctx, w.name, metav1.GetOptions{})
		if err != nil {
			return nil, tmpl, false, "", err
		}
		s := d.Status
		done = s.ObservedGeneration >= d.Generation && s.DesiredNumberScheduled > 0 && s.UpdatedNumberScheduled == s.DesiredNumberScheduled && s.NumberAvailable == s.DesiredNumberScheduled && s.CurrentNumberScheduled == s.DesiredNumberScheduled
		return d.Labels, d.Spec.Template, done, fmt.Sprintf("scheduled %d updated %d available %d of %d", s.CurrentNumberScheduled, s.UpdatedNumberScheduled, s.NumberAvailable, s.DesiredNumberScheduled), nil
	}
	return nil, tmpl, false, "", fmt.Errorf("unknown workload kind %s", w.kind)
}

// waitRolledOut waits until the workload is rolled out and only its
// current pods are left, and returns them.
func waitRolledOut(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, w workload, replicas int) []corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		_, _, done, waiting, err := getWorkload(ctx, c, ns, w)
		if err != nil {
			t.Fatalf("get %s in %s: %v", w, ns, err)
		}
		var pods []corev1.Pod
		if done {
			all, err := c.Pods(ctx, ns, "workload="+w.name)
			if err != nil {
				t.Fatal(err)
			}
			ready := 0
			for _, p := range all {
				pods = append(pods, p)
				if p.DeletionTimestamp == nil && podReady(&p) {
					ready++
				}
			}
			if len(pods) == replicas && ready == replicas {
				return pods
			}
			waiting = fmt.Sprintf("%d pods, %d ready; want %d", len(pods), ready, replicas)
		}
		if why := stuck(ctx, c, ns, w.name); why != "" {
			t.Fatalf("%s in %s will not roll out: %s", w, ns, why)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s in %s not rolled out after 3m: %s", w, ns, waiting)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// stuck says why a pod of the workload cannot start without help (an image
// that is not in the cluster), or "" while waiting makes sense.
func stuck(ctx context.Context, c *framework.Cluster, ns, name string) string {
	pods, err := c.Pods(ctx, ns, "workload="+name)
	if err != nil {
		return ""
	}
	for _, p := range pods {
		for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			if w := s.State.Waiting; w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff" || w.Reason == "ErrImageNeverPull") {
				return fmt.Sprintf("pod %s: container %s: %s (image %s not loaded into the cluster?)", p.Name, s.Name, w.Reason, s.Image)
			}
		}
	}
	return ""
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// restarts is the restart count of a container of the pod (app or sidecar).
func restarts(p *corev1.Pod, container string) int32 {
	for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.ContainerStatuses...), p.Status.InitContainerStatuses...) {
		if s.Name == container {
			return s.RestartCount
		}
	}
	return -1
}

// agentOf returns the agent container the Job added: a native sidecar (an
// init container with restartPolicy Always) on this Kubernetes.
func agentOf(p *corev1.Pod) *corev1.Container {
	for i, c := range p.Spec.InitContainers {
		if strings.HasPrefix(c.Name, agentPrefix) {
			return &p.Spec.InitContainers[i]
		}
	}
	for i, c := range p.Spec.Containers {
		if strings.HasPrefix(c.Name, agentPrefix) {
			return &p.Spec.Containers[i]
		}
	}
	return nil
}

// checkInjected checks a pod of an injected workload: the Secret's volume,
// a read-only mount of it in the app at the default path, and the agent
// (a native sidecar with the reload mode asked for, running as the app's
// user where it must signal it).
func checkInjected(t *testing.T, p *corev1.Pod, secret, reload string) {
	t.Helper()
	vol := ""
	for _, v := range p.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			vol = v.Name
		}
	}
	if vol == "" {
		t.Errorf("pod %s: no volume of Secret %s", p.Name, secret)
		return
	}
	for _, c := range p.Spec.Containers {
		if c.Name != appContainer {
			continue
		}
		found := false
		for _, m := range c.VolumeMounts {
			if m.Name == vol {
				found = true
				if m.MountPath != mountPath(secret) || !m.ReadOnly || m.SubPath != "" {
					t.Errorf("pod %s: app mounts %s at %s (readOnly %v, subPath %q); want read-only at %s, no subPath", p.Name, vol, m.MountPath, m.ReadOnly, m.SubPath, mountPath(secret))
				}
			}
		}
		if !found {
			t.Errorf("pod %s: app container does not mount volume %s", p.Name, vol)
		}
	}
	a := agentOf(p)
	if a == nil {
		t.Errorf("pod %s: no %s* container", p.Name, agentPrefix)
		return
	}
	if a.RestartPolicy == nil || *a.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("pod %s: agent %s is not a native sidecar (init container with restartPolicy Always)", p.Name, a.Name)
	}
	if !contains(a.Args, "--reload="+reload) || !contains(a.Args, "--watch="+mountPath(secret)) {
		t.Errorf("pod %s: agent args %q; want --reload=%s and --watch=%s", p.Name, a.Args, reload, mountPath(secret))
	}
	// Only a signal or a restart of the app's own process needs its user
	// and its PID namespace; restart-all asks the kubelet instead.
	if reload == "restart" || strings.HasPrefix(reload, "signal:") {
		if a.SecurityContext == nil || a.SecurityContext.RunAsUser == nil || *a.SecurityContext.RunAsUser != appUID {
			t.Errorf("pod %s: agent does not run as the app's user %d", p.Name, appUID)
		}
		if p.Spec.ShareProcessNamespace == nil || !*p.Spec.ShareProcessNamespace {
			t.Errorf("pod %s: shareProcessNamespace is not true; the agent cannot see the app's process", p.Name)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// appState is what the demo app serves on GET /: what it loaded, when, and
// how often it reloaded. Its "digest" is derived from the secret values, so it
// is left out.
type appState struct {
	Version string    `json:"version"`
	Reloads int       `json:"reloads"`
	Started time.Time `json:"started"`
	Loaded  time.Time `json:"loaded"`
	PID     int       `json:"pid"`
}

func (s appState) String() string {
	return fmt.Sprintf("version %q, reloads %d, pid %d, started %s", s.Version, s.Reloads, s.PID, s.Started.Format(time.RFC3339Nano))
}

// getApp asks the demo app in pod what it serves, through the API server's
// pod proxy (the image has no shell to exec into).
func getApp(ctx context.Context, c *framework.Cluster, ns, pod string) (appState, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := c.Client.CoreV1().Pods(ns).ProxyGet("http", pod, "8080", "/", nil).DoRaw(ctx)
	if err != nil {
		return appState{}, fmt.Errorf("GET / of the app in pod %s/%s: %w", ns, pod, err)
	}
	var s appState
	if err := json.Unmarshal(body, &s); err != nil {
		return appState{}, fmt.Errorf("GET / of the app in pod %s/%s: %w", ns, pod, err)
	}
	return s, nil
}

// waitApp polls the app until ok says yes, and returns what it served.
func waitApp(ctx context.Context, c *framework.Cluster, ns, pod string, timeout time.Duration, what string, ok func(appState) bool) (appState, error) {
	deadline := time.Now().Add(timeout)
	var last appState
	var lastErr error
	for {
		s, err := getApp(ctx, c, ns, pod)
		if err == nil && ok(s) {
			return s, nil
		}
		if err == nil {
			last, lastErr = s, nil
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if lastErr != nil {
				return last, fmt.Errorf("pod %s/%s: no %s after %s: %w", ns, pod, what, timeout, lastErr)
			}
			return last, fmt.Errorf("pod %s/%s: no %s after %s: the app serves %s", ns, pod, what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func version(v string) func(appState) bool { return func(s appState) bool { return s.Version == v } }

// agentMetric sums the samples of a metric the agent in pod serves on
// /metrics whose labels contain every one of labels (as `name="value"`).
func agentMetric(ctx context.Context, c *framework.Cluster, ns, pod, name string, labels ...string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := c.Client.CoreV1().Pods(ns).ProxyGet("http", pod, agentPort, "/metrics", nil).DoRaw(ctx)
	if err != nil {
		return 0, fmt.Errorf("GET /metrics of the agent in pod %s/%s: %w", ns, pod, err)
	}
	sum := 0.0
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		i := strings.LastIndexByte(rest, ' ')
		series := rest[:i]
		matched := true
		for _, l := range labels {
			if !strings.Contains(series, l) {
				matched = false
			}
		}
		if !matched {
			continue
		}
		v, err := strconv.ParseFloat(rest[i+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q of pod %s/%s: %w", line, ns, pod, err)
		}
		sum += v
	}
	return sum, nil
}

// waitMetric polls the agent's metric until ok says yes, and returns it.
func waitMetric(ctx context.Context, c *framework.Cluster, ns, pod string, timeout time.Duration, ok func(float64) bool, name string, labels ...string) (float64, error) {
	deadline := time.Now().Add(timeout)
	for {
		v, err := agentMetric(ctx, c, ns, pod, name, labels...)
		if err == nil && ok(v) {
			return v, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err != nil {
				return v, err
			}
			return v, fmt.Errorf("agent in pod %s/%s: %s%v = %v after %s", ns, pod, name, labels, v, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// templateDiff names the parts of two pod templates that differ.
func templateDiff(a, b corev1.PodTemplateSpec) []string {
	var d []string
	parts := []struct {
		name string
		a, b any
	}{
		{"labels", a.Labels, b.Labels},
		{"annotations", a.Annotations, b.Annotations},
		{"volumes", a.Spec.Volumes, b.Spec.Volumes},
		{"containers", a.Spec.Containers, b.Spec.Containers},
		{"initContainers", a.Spec.InitContainers, b.Spec.InitContainers},
		{"shareProcessNamespace", a.Spec.ShareProcessNamespace, b.Spec.ShareProcessNamespace},
		{"securityContext", a.Spec.SecurityContext, b.Spec.SecurityContext},
	}
	for _, p := range parts {
		if !equality.Semantic.DeepEqual(p.a, p.b) {
			ja, _ := json.Marshal(p.a)
			jb, _ := json.Marshal(p.b)
			d = append(d, fmt.Sprintf("%s: %s, was %s", p.name, jb, ja))
		}
	}
	if len(d) == 0 && !equality.Semantic.DeepEqual(a, b) {
		d = append(d, "other fields of the pod template")
	}
	return d
}

// tlsPair is a self-signed ECDSA certificate and its key, PEM-encoded, valid
// from notBefore to notAfter.
func tlsPair(t *testing.T, notBefore, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "demo.example"},
		DNSNames:     []string{"demo.example"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func tlsData(version string, cert, key []byte) map[string][]byte {
	return map[string][]byte{"version": []byte(version), corev1.TLSCertKey: cert, corev1.TLSPrivateKeyKey: key}
}
