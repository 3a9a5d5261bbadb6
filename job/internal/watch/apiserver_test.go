package watch

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/k8secrets/k8secrets/internal/apitest"
	"github.com/k8secrets/k8secrets/internal/wellknown"
)

func TestMain(m *testing.M) { os.Exit(apitest.Main(m)) }

// fx is one namespace of a real API server with an injected Deployment
// "web" (two pods, signal mode) mounting Secret "db", a Deployment "plain"
// that mounts "db" too but was not injected (one pod), and Secrets that no
// injection names. There is no controller manager and no kubelet: the test
// makes the pods and marks them Running and Ready.
type fx struct {
	t   *testing.T
	ctx context.Context
	api *apitest.Env
	c   kubernetes.Interface
	ns  string
}

func newFx(t *testing.T) *fx {
	api := apitest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	f := &fx{t: t, ctx: ctx, api: api, c: api.Client, ns: api.Namespace(t)}
	f.secret("db", "v0")
	for i := range 5 {
		f.secret(fmt.Sprintf("unrelated-%d", i), "x")
	}
	f.deployment("web", true, "signal:SIGHUP")
	f.pod("web-0", "web")
	f.pod("web-1", "web")
	f.deployment("plain", false, "")
	f.pod("plain-0", "plain")
	return f
}

func (f *fx) secret(name, value string) {
	f.t.Helper()
	_, err := f.c.CoreV1().Secrets(f.ns).Create(f.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name},
		Data: map[string][]byte{"password": []byte(value)}}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
}

// setSecret changes the Secret's data (value != "") or its annotations.
func (f *fx) setSecret(name, value string, ann map[string]string) string {
	f.t.Helper()
	s, err := f.c.CoreV1().Secrets(f.ns).Get(f.ctx, name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	if value != "" {
		s.Data = map[string][]byte{"password": []byte(value)}
	}
	if ann != nil {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		for k, v := range ann {
			s.Annotations[k] = v
		}
	}
	s, err = f.c.CoreV1().Secrets(f.ns).Update(f.ctx, s, metav1.UpdateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return s.ResourceVersion
}

func podSpec(secret, reload string) corev1.PodSpec {
	spec := corev1.PodSpec{
		Containers: []corev1.Container{{Name: "app", Image: "app:1"}},
		Volumes: []corev1.Volume{{Name: "k8secrets-" + secret, VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{SecretName: secret}}}},
	}
	if reload != "" {
		spec.Containers = append(spec.Containers, corev1.Container{Name: "k8secrets-agent-" + secret, Image: "agent:1",
			Args: []string{"--watch=/var/run/secrets/k8secrets/" + secret, "--reload=" + reload}})
	}
	return spec
}

func (f *fx) deployment(name string, injected bool, reload string) {
	f.t.Helper()
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec:       podSpec("db", reload),
			},
		},
	}
	if injected {
		d.Labels = map[string]string{wellknown.LabelInjected: "true"}
		d.Spec.Template.Annotations = map[string]string{wellknown.AnnotationSecretPrefix + "db": "db"}
	}
	if _, err := f.c.AppsV1().Deployments(f.ns).Create(f.ctx, d, metav1.CreateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

// pod makes a Running, Ready pod of app, as its kubelet would report it.
func (f *fx) pod(name, app string) {
	f.t.Helper()
	reload := ""
	if app == "web" {
		reload = "signal:SIGHUP"
	}
	p, err := f.c.CoreV1().Pods(f.ns).Create(f.ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": app}},
		Spec:       podSpec("db", reload),
	}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if _, err := f.c.CoreV1().Pods(f.ns).UpdateStatus(f.ctx, p, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

// refreshedAt is each pod's refresh annotation ("" if none).
func (f *fx) refreshedAt() map[string]string {
	f.t.Helper()
	l, err := f.c.CoreV1().Pods(f.ns).List(f.ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range l.Items {
		out[p.Name] = p.Annotations[wellknown.RefreshAnnotation]
	}
	return out
}

func (f *fx) recorded(name string) string {
	f.t.Helper()
	d, err := f.c.AppsV1().Deployments(f.ns).Get(f.ctx, name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return d.Annotations[RotatedPrefix+"db"]
}

// events lists "Kind/name reason instance" of the watch's Events.
func (f *fx) events(reason string) []string {
	f.t.Helper()
	l, err := f.c.EventsV1().Events(f.ns).List(f.ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, e := range l.Items {
		if e.Reason == reason && e.ReportingController == ReportingController {
			out = append(out, e.Regarding.Kind+"/"+e.Regarding.Name+" "+e.ReportingInstance)
		}
	}
	return out
}

func (f *fx) until(what string, timeout time.Duration, cond func() bool) {
	f.t.Helper()
	err := wait.PollUntilContextTimeout(f.ctx, 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		f.t.Fatalf("%s: not within %s", what, timeout)
	}
}

func (f *fx) holder() string {
	l, err := f.c.CoordinationV1().Leases(f.ns).Get(f.ctx, "k8secrets-watch", metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// replica is one running "k8secrets-job watch".
type replica struct {
	id     string
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (f *fx) options(id string, logs io.Writer) Options {
	return Options{
		Namespaces: []string{f.ns}, MinInterval: time.Second, BreakerChanges: DefaultBreakerChanges, BreakerWindow: DefaultBreakerWindow,
		Settle: 10 * time.Second, VerifyTimeout: 20 * time.Second, Instance: id,
		Log: slog.New(slog.NewTextHandler(logs, nil)),
	}
}

// start runs a replica with client (nil: admin) and options o (nil: the
// defaults of options).
func (f *fx) start(id string, client kubernetes.Interface, mod func(*Options)) *replica {
	if client == nil {
		client = f.c
	}
	r := &replica{id: id, done: make(chan error, 1), logs: &syncBuffer{}}
	o := f.options(id, r.logs)
	if mod != nil {
		mod(&o)
	}
	ctx, cancel := context.WithCancel(f.ctx)
	r.cancel = cancel
	go func() {
		r.done <- Run(ctx, client, Election{Namespace: f.ns, Name: "k8secrets-watch", Identity: id}, "", o)
	}()
	f.t.Cleanup(func() {
		cancel()
		<-r.done
		if f.t.Failed() {
			f.t.Logf("logs of %s:\n%s", id, r.logs.String())
		}
	})
	return r
}

// stop is SIGTERM: Run returns nil once it has stopped and released.
func (r *replica) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Fatalf("replica %s: Run = %v; want nil after SIGTERM", r.id, err)
	}
	r.done <- nil // for Cleanup
}

// counting records every request a client makes: method and URL.
type counting struct {
	mu   sync.Mutex
	reqs []string
	next http.RoundTripper
}

func (c *counting) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.reqs = append(c.reqs, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}

func (c *counting) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.reqs...)
}

func countingClient(t *testing.T, cfg *rest.Config) (kubernetes.Interface, *counting) {
	cfg = rest.CopyConfig(cfg)
	cnt := &counting{}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { cnt.next = rt; return cnt })
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, cnt
}

// The watch reads only what the Job injected: its informers ask for the
// labelled workloads and, by name, the Secrets they mount; a Secret no
// injection names and a workload that was not injected are never read or
// touched. A change of the Secret's data reaches the injected pods, with
// Refreshed and Verified Events on the Deployment and the Secret; a change
// of its labels does not.
func TestAPIWatchInformersRestrictedToInjected(t *testing.T) {
	f := newFx(t)
	client, cnt := countingClient(t, f.api.Config)
	f.start("a", client, nil)
	f.until("baseline recorded on web", 30*time.Second, func() bool { return f.recorded("web") != "" })
	base := f.refreshedAt()
	if base["web-0"] != "" || base["plain-0"] != "" {
		t.Fatalf("pods poked at start: %v; the first sight is a baseline", base)
	}

	// Unrelated Secrets and a metadata-only change: nothing.
	f.setSecret("unrelated-0", "y", nil)
	f.setSecret("db", "", map[string]string{"team": "a"})
	// Then a data change: rotated.
	f.setSecret("db", "v1", nil)
	f.until("web's pods refreshed and the Deployment and Secret verified", 30*time.Second, func() bool {
		return len(f.events(ReasonVerified)) == 2
	})
	got := f.refreshedAt()
	if got["web-0"] == "" || got["web-1"] == "" {
		t.Errorf("web's pods not refreshed: %v", got)
	}
	if got["plain-0"] != "" {
		t.Errorf("pod plain-0 of a Deployment that was not injected was refreshed")
	}
	if r := f.events(ReasonRefreshed); len(r) != 2 {
		t.Errorf("Refreshed events %v; want one on Deployment/web and one on Secret/db", r)
	}

	for _, r := range cnt.list() {
		path, query, _ := strings.Cut(r, "?")
		switch {
		case strings.Contains(path, "/secrets"):
			if !strings.Contains(query, "fieldSelector=metadata.name%3Ddb") {
				t.Errorf("a Secret request not restricted to db by name: %s", r)
			}
		case strings.HasPrefix(r, "GET") && (strings.HasSuffix(path, "/deployments") || strings.HasSuffix(path, "/statefulsets") || strings.HasSuffix(path, "/daemonsets")):
			if !strings.Contains(query, "labelSelector=k8secrets.io%2Finjected%3Dtrue") {
				t.Errorf("a workload list or watch not restricted to the injected ones: %s", r)
			}
		case strings.Contains(path, "/deployments/plain"), strings.Contains(path, "/pods/plain-0"):
			t.Errorf("touched an object that was not injected: %s", r)
		}
	}
	t.Logf("%d requests; secrets: %d", len(cnt.list()), strings.Count(strings.Join(cnt.list(), "\n"), "/secrets"))
}
