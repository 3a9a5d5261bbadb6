//go:build e2e

// Package job proves k8secrets-job on a real cluster (kind, a real kubelet
// and container runtime): the binary run from outside with an admin
// kubeconfig, and in-cluster as the Kubernetes Job of manifests/base under
// its shipped ServiceAccount and Role. Every test works in its own namespace
// and checks what a user would check: the objects in the API server, the
// pods, and the Secret's file inside them; never the Job's own report.
//
// Environment (set by `make e2e`):
//
//	E2E_IMAGE_TAG  tag of the k8secrets-job and k8secrets-agent images loaded into the cluster
//	E2E_BIN        folder holding the k8secrets-job binary (`make build`)
//	E2E_KUBECTL    a kubectl, for `kubectl kustomize` and `kubectl apply`
package job

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
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

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

func TestMain(m *testing.M) { os.Exit(framework.Main(m)) }

// mountDir is the Job's default mount directory: the Secret appears at
// mountDir/<secret>.
const mountDir = "/var/run/secrets/k8secrets"

// missingImage is an agent image no node has and no registry serves: pods
// of a revision that uses it never become Ready.
const missingImage = "k8secrets-agent:e2e-does-not-exist"

type suite struct {
	*framework.Cluster
	tag     string // E2E_IMAGE_TAG
	bin     string // the k8secrets-job binary
	kubectl string
}

var (
	setupOnce sync.Once
	setupErr  error
	theSuite  *suite
)

// setup returns the suite: the cluster, the binary and the images, with the
// test app image built and loaded once per package.
func setup(t *testing.T) *suite {
	t.Helper()
	c := framework.Get(t)
	setupOnce.Do(func() {
		s := &suite{Cluster: c, tag: os.Getenv("E2E_IMAGE_TAG"), kubectl: os.Getenv("E2E_KUBECTL")}
		if s.tag == "" || os.Getenv("E2E_BIN") == "" {
			setupErr = errors.New("set E2E_IMAGE_TAG (the tag of the k8secrets-job and k8secrets-agent images loaded into the cluster) and E2E_BIN (the folder of the k8secrets-job binary); `make e2e` does")
			return
		}
		s.bin = filepath.Join(os.Getenv("E2E_BIN"), "k8secrets-job")
		if _, err := os.Stat(s.bin); err != nil {
			setupErr = fmt.Errorf("the Job's binary: %w; run `make build`", err)
			return
		}
		if s.kubectl == "" {
			s.kubectl = "kubectl"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		// `make e2e` has loaded them; loading again (seconds) makes a direct
		// `go test` run on images just built with `make images` right too.
		switch err := c.LoadImages(ctx, s.jobImage(), s.agentImage()); {
		case errors.Is(err, framework.ErrNotKind):
		case err != nil:
			setupErr = fmt.Errorf("%w; build them with `make images VERSION=%s`", err, s.tag)
			return
		}
		if err := c.BuildTestApp(ctx); err != nil {
			setupErr = err
			return
		}
		theSuite = s
	})
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	return theSuite
}

func (s *suite) agentImage() string { return "k8secrets-agent:" + s.tag }
func (s *suite) jobImage() string   { return "k8secrets-job:" + s.tag }

// testContext bounds a test and ends with it.
func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// secretValue is random, non-secret test content for a Secret's key.
func secretValue() []byte {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return []byte(hex.EncodeToString(b))
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// createSecret creates an Opaque Secret with one key, password, holding
// random test content, and returns that content.
func (s *suite) createSecret(ctx context.Context, t *testing.T, ns, name string) []byte {
	t.Helper()
	v := secretValue()
	_, err := s.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Data:       map[string][]byte{"password": v},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create secret %s/%s: %v", ns, name, err)
	}
	s.GuardSecrets(t, ns, v)
	return v
}

// result is one run of the Job's binary.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// job runs the Job's binary against ns with kubeconfig (the admin one when
// empty) and returns its exit code and output. It fails the test if any of
// secrets reached the output.
func (s *suite) job(ctx context.Context, t *testing.T, kubeconfig, ns string, secrets [][]byte, args ...string) result {
	t.Helper()
	p := s.start(ctx, t, kubeconfig, ns, args...)
	return p.wait(t, secrets)
}

type proc struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	err            error
}

// start starts the Job's binary in the background.
func (s *suite) start(ctx context.Context, t *testing.T, kubeconfig, ns string, args ...string) *proc {
	t.Helper()
	if kubeconfig == "" {
		kubeconfig = s.Kubeconfig
	}
	full := append([]string{args[0], "--kubeconfig", kubeconfig, "-n", ns}, args[1:]...)
	p := &proc{cmd: exec.CommandContext(ctx, s.bin, full...), done: make(chan struct{})}
	// Only what the command line says: no K8SECRETS_* from the caller.
	p.cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	t.Logf("k8secrets-job %s", strings.Join(full, " "))
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", s.bin, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p
}

func (p *proc) wait(t *testing.T, secrets [][]byte) result {
	t.Helper()
	<-p.done
	r := result{stdout: p.stdout.String(), stderr: p.stderr.String()}
	var exit *exec.ExitError
	switch {
	case p.err == nil:
	case errors.As(p.err, &exit):
		r.code = exit.ExitCode()
	default:
		t.Fatalf("run k8secrets-job: %v", p.err)
	}
	if framework.Leaked(p.stdout.Bytes(), secrets...) || framework.Leaked(p.stderr.Bytes(), secrets...) {
		t.Fatalf("k8secrets-job %v printed a Secret's value, raw, base64 or hex (output withheld)", p.cmd.Args[1:])
	}
	return r
}

// injectArgs is an inject command line with the suite's agent image.
func (s *suite) injectArgs(selector, secret string, extra ...string) []string {
	return append([]string{"inject", "-l", selector, "--secret", secret, "--agent-image", s.agentImage()}, extra...)
}

func ptrTo[T any](v T) *T { return &v }

// podTemplate is the test app (framework.TestAppImage, which has cat for
// ReadFile) as user 1000, hardened as users run apps: the agent runs as the
// app's user to be allowed to restart it.
func podTemplate(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptrTo(int64(5)),
			Containers: []corev1.Container{{
				Name:            "app",
				Image:           framework.TestAppImage,
				ImagePullPolicy: corev1.PullIfNotPresent,
				SecurityContext: &corev1.SecurityContext{
					RunAsUser:                ptrTo(int64(1000)),
					RunAsGroup:               ptrTo(int64(1000)),
					RunAsNonRoot:             ptrTo(true),
					ReadOnlyRootFilesystem:   ptrTo(true),
					AllowPrivilegeEscalation: ptrTo(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

func selector(app string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
}

// deployment creates a Deployment of the test app, changed by opts, and
// waits until it is available.
func (s *suite) deployment(ctx context.Context, t *testing.T, ns, name, app string, replicas int32, opts ...func(*appsv1.Deployment)) *appsv1.Deployment {
	t.Helper()
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: ptrTo(replicas), Selector: selector(app), Template: podTemplate(app)}}
	for _, o := range opts {
		o(d)
	}
	if _, err := s.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment %s/%s: %v", ns, name, err)
	}
	if err := s.WaitDeploymentAvailable(ctx, ns, name, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	d, err := s.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func minReady(seconds int32) func(*appsv1.Deployment) {
	return func(d *appsv1.Deployment) { d.Spec.MinReadySeconds = seconds }
}

// statefulSet creates a StatefulSet of the test app and waits until every
// replica is Ready at its current revision.
func (s *suite) statefulSet(ctx context.Context, t *testing.T, ns, name, app string, replicas int32, strategy appsv1.StatefulSetUpdateStrategyType) *appsv1.StatefulSet {
	t.Helper()
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.StatefulSetSpec{Replicas: ptrTo(replicas), Selector: selector(app), Template: podTemplate(app),
			ServiceName: name, UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: strategy}}}
	if _, err := s.Client.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create statefulset %s/%s: %v", ns, name, err)
	}
	return s.waitStatefulSet(ctx, t, ns, name)
}

// waitStatefulSet waits until the StatefulSet's controller observed its
// spec and every replica is Ready at the update revision.
func (s *suite) waitStatefulSet(ctx context.Context, t *testing.T, ns, name string) *appsv1.StatefulSet {
	t.Helper()
	var sts *appsv1.StatefulSet
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		sts, err = s.Client.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		want := *sts.Spec.Replicas
		st := sts.Status
		return st.ObservedGeneration == sts.Generation && st.ReadyReplicas == want && st.Replicas == want &&
			st.UpdatedReplicas == want && st.CurrentRevision == st.UpdateRevision, nil
	})
	if err != nil {
		t.Fatalf("statefulset %s/%s not ready: %v (status %+v)\n%s", ns, name, err, sts.Status, s.podStates(ns, "app="+sts.Spec.Selector.MatchLabels["app"]))
	}
	return sts
}

// daemonSet creates a DaemonSet of the test app and waits until its pod
// on every node is Ready.
func (s *suite) daemonSet(ctx context.Context, t *testing.T, ns, name, app string) *appsv1.DaemonSet {
	t.Helper()
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DaemonSetSpec{Selector: selector(app), Template: podTemplate(app)}}
	if _, err := s.Client.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create daemonset %s/%s: %v", ns, name, err)
	}
	return s.waitDaemonSet(ctx, t, ns, name)
}

func (s *suite) waitDaemonSet(ctx context.Context, t *testing.T, ns, name string) *appsv1.DaemonSet {
	t.Helper()
	var ds *appsv1.DaemonSet
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		ds, err = s.Client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		st := ds.Status
		return st.ObservedGeneration == ds.Generation && st.DesiredNumberScheduled > 0 &&
			st.NumberReady == st.DesiredNumberScheduled && st.UpdatedNumberScheduled == st.DesiredNumberScheduled &&
			st.NumberAvailable == st.DesiredNumberScheduled, nil
	})
	if err != nil {
		t.Fatalf("daemonset %s/%s not ready: %v (status %+v)", ns, name, err, ds.Status)
	}
	return ds
}

// livePods lists the pods matching sel that are not being deleted.
func (s *suite) livePods(ctx context.Context, t *testing.T, ns, sel string) []corev1.Pod {
	t.Helper()
	pods, err := s.Pods(ctx, ns, sel)
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range pods {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// settledPods waits until exactly want pods match sel, none being deleted,
// all Ready and all with (or all without) the Secret's volume, and returns
// them.
func (s *suite) settledPods(ctx context.Context, t *testing.T, ns, sel string, want int, secret string, injected bool) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		all, err := s.Pods(ctx, ns, sel)
		if err != nil {
			return false, nil
		}
		pods = all
		if len(all) != want {
			return false, nil
		}
		for i := range all {
			p := &all[i]
			if p.DeletionTimestamp != nil || !podReady(p) || mountsSecret(p, secret) != injected {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("pods %s in %s: want %d Ready pods, none terminating, mounting secret %s: %v; got:\n%s",
			sel, ns, want, secret, injected, s.podStates(ns, sel))
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	return pods
}

// podStates describes the pods matching sel for a failure message.
func (s *suite) podStates(ns, sel string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pods, err := s.Pods(ctx, ns, sel)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for i := range pods {
		p := &pods[i]
		fmt.Fprintf(&b, "  pod %s: %s ready=%t mounts=%v deleting=%t\n", p.Name, p.Status.Phase, podReady(p), secretVolumes(p), p.DeletionTimestamp != nil)
		for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			state := "running"
			if w := cs.State.Waiting; w != nil {
				state = "waiting " + w.Reason
			} else if x := cs.State.Terminated; x != nil {
				state = fmt.Sprintf("terminated %s (exit %d)", x.Reason, x.ExitCode)
			}
			fmt.Fprintf(&b, "    %s: %s ready=%t restarts=%d\n", cs.Name, state, cs.Ready, cs.RestartCount)
		}
	}
	return b.String()
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// secretVolumes lists the Secrets a pod mounts as volumes.
func secretVolumes(p *corev1.Pod) []string {
	var out []string
	for _, v := range p.Spec.Volumes {
		if v.Secret != nil {
			out = append(out, v.Secret.SecretName)
		}
	}
	return out
}

// mountsSecret tells whether the pod's app container mounts secret at the
// default path, read-only.
func mountsSecret(p *corev1.Pod, secret string) bool {
	vol := ""
	for _, v := range p.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			vol = v.Name
		}
	}
	if vol == "" {
		return false
	}
	for _, c := range p.Spec.Containers {
		if c.Name != "app" {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == vol && m.MountPath == mountDir+"/"+secret && m.ReadOnly {
				return true
			}
		}
	}
	return false
}

// checkSecretFile reads the Secret's password file in the app container of
// each pod and compares its digest with want's.
func (s *suite) checkSecretFile(ctx context.Context, t *testing.T, pods []corev1.Pod, secret string, want []byte) {
	t.Helper()
	path := mountDir + "/" + secret + "/password"
	for _, p := range pods {
		got, err := s.ReadFile(ctx, p.Namespace, p.Name, "app", path)
		if err != nil {
			t.Errorf("pod %s/%s: %v", p.Namespace, p.Name, err)
			continue
		}
		if digest(got) != digest(want) {
			t.Errorf("pod %s/%s: %s has digest %s (%d bytes); want the Secret's %s (%d bytes)", p.Namespace, p.Name, path, digest(got), len(got), digest(want), len(want))
		}
	}
}

// versions lists every object of ns the Job could read or write, each
// with its resourceVersion: equal strings mean nothing changed.
func (s *suite) versions(ctx context.Context, t *testing.T, ns string) string {
	t.Helper()
	var items []string
	add := func(kind string, err error, metas ...metav1.Object) {
		if err != nil {
			t.Fatalf("list %s in %s: %v", kind, ns, err)
		}
		for _, m := range metas {
			items = append(items, fmt.Sprintf("%s/%s@%s", kind, m.GetName(), m.GetResourceVersion()))
		}
	}
	apps, core, opts := s.Client.AppsV1(), s.Client.CoreV1(), metav1.ListOptions{}
	dl, err := apps.Deployments(ns).List(ctx, opts)
	add("deployment", err, metas(dl, func(l *appsv1.DeploymentList) []metav1.Object { return objs(l.Items) })...)
	sl, err := apps.StatefulSets(ns).List(ctx, opts)
	add("statefulset", err, metas(sl, func(l *appsv1.StatefulSetList) []metav1.Object { return objs(l.Items) })...)
	dsl, err := apps.DaemonSets(ns).List(ctx, opts)
	add("daemonset", err, metas(dsl, func(l *appsv1.DaemonSetList) []metav1.Object { return objs(l.Items) })...)
	rl, err := apps.ReplicaSets(ns).List(ctx, opts)
	add("replicaset", err, metas(rl, func(l *appsv1.ReplicaSetList) []metav1.Object { return objs(l.Items) })...)
	crl, err := apps.ControllerRevisions(ns).List(ctx, opts)
	add("controllerrevision", err, metas(crl, func(l *appsv1.ControllerRevisionList) []metav1.Object { return objs(l.Items) })...)
	pl, err := core.Pods(ns).List(ctx, opts)
	add("pod", err, metas(pl, func(l *corev1.PodList) []metav1.Object { return objs(l.Items) })...)
	secl, err := core.Secrets(ns).List(ctx, opts)
	add("secret", err, metas(secl, func(l *corev1.SecretList) []metav1.Object { return objs(l.Items) })...)
	ll, err := s.Client.CoordinationV1().Leases(ns).List(ctx, opts)
	if err != nil {
		t.Fatalf("list leases in %s: %v", ns, err)
	}
	for _, l := range ll.Items {
		items = append(items, "lease/"+l.Name+"@"+l.ResourceVersion)
	}
	sort.Strings(items)
	return strings.Join(items, " ")
}

// stableVersions waits until versions gives the same answer twice, 2s
// apart (controllers and the kubelet have finished writing status after the
// last change), and returns it: a snapshot to compare with after a run.
func (s *suite) stableVersions(ctx context.Context, t *testing.T, ns string) string {
	t.Helper()
	prev := s.versions(ctx, t, ns)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		time.Sleep(2 * time.Second)
		cur := s.versions(ctx, t, ns)
		if cur == prev {
			return cur
		}
		prev = cur
	}
	t.Fatalf("objects in %s kept changing for 30s; last: %s", ns, prev)
	return ""
}

func metas[L any](l *L, f func(*L) []metav1.Object) []metav1.Object {
	if l == nil {
		return nil
	}
	return f(l)
}

func objs[T any, P interface {
	*T
	metav1.Object
}](items []T) []metav1.Object {
	out := make([]metav1.Object, len(items))
	for i := range items {
		out[i] = P(&items[i])
	}
	return out
}

// webInjected checks that deployment/web is available again and that both
// its pods mount db-creds, holding value.
func (s *suite) webInjected(ctx context.Context, t *testing.T, ns string, value []byte) {
	t.Helper()
	if err := s.WaitDeploymentAvailable(ctx, ns, "web", time.Minute); err != nil {
		t.Fatal(err)
	}
	pods := s.settledPods(ctx, t, ns, "app=web", 2, "db-creds", true)
	s.checkSecretFile(ctx, t, pods, "db-creds", value)
}

// webRolledBack checks that deployment/web's pod template is exactly orig's
// again, that it is available, and that its pods are the ones from before,
// not restarted.
func (s *suite) webRolledBack(ctx context.Context, t *testing.T, ns string, orig *appsv1.Deployment, before []corev1.Pod) {
	t.Helper()
	d, err := s.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(d.Spec.Template, orig.Spec.Template) {
		t.Errorf("after the rollback deployment/web's template is\n%+v\nwant the one before\n%+v", d.Spec.Template, orig.Spec.Template)
	}
	if err := s.WaitDeploymentAvailable(ctx, ns, "web", time.Minute); err != nil {
		t.Fatal(err)
	}
	after := s.settledPods(ctx, t, ns, "app=web", 2, "db-creds", false)
	if got, want := restartCounts(after), restartCounts(before); got != want {
		t.Errorf("pods after the rollback: %s; want the original pods, not restarted: %s", got, want)
	}
}
