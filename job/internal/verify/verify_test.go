package verify

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/k8secrets/k8secrets/internal/contentid"
	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/plan"
)

const (
	ns     = "shop"
	secret = "db-creds"
	// value is the Secret's content: it must never show in a reason.
	value = "s3cr3t-value-never-shown"
)

func data(v string) map[string][]byte { return map[string][]byte{"password": []byte(v)} }

func newKey(t *testing.T) string {
	t.Helper()
	k, err := contentid.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func id(t *testing.T, key string, d map[string][]byte) string {
	t.Helper()
	s, err := contentid.Of(key, d)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// agent is a stand-in agent: its handler serves /status.
func agent(t *testing.T, h http.HandlerFunc) int32 {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/status", h)
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	_, p, _ := net.SplitHostPort(s.Listener.Addr().String())
	n, _ := strconv.Atoi(p)
	return int32(n)
}

// closedPort is a port where nothing listens.
func closedPort(t *testing.T) int32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

// serve answers /status with one directory.
func serve(d directory) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(status{Agent: "v-test", Keyed: true, Directories: []directory{d}})
	}
}

const mountPath = "/var/run/secrets/k8secrets/db-creds"

type podOpt func(*corev1.Pod)

// pod is a running pod of Deployment web that mounts the Secret, with the
// agent of its injection listening on port, holding key ("" for none).
func pod(name string, port int32, key string, opts ...podOpt) *corev1.Pod {
	a := corev1.Container{Name: plan.AgentName(plan.ID(secret)), Args: []string{"--watch=" + mountPath, "--reload=restart", "--listen=:" + strconv.Itoa(int(port))}}
	if key != "" {
		a.Env = []corev1.EnvVar{{Name: contentid.KeyEnv, Value: key}}
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID("uid-" + name),
			Labels:          map[string]string{"pod-template-hash": "5d8f"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-5d8f", Controller: ptr.To(true)}}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{a},
			Containers:     []corev1.Container{{Name: "app"}},
			Volumes: []corev1.Volume{{Name: "k8secrets-db-creds", VolumeSource: corev1.VolumeSource{
				Secret: &corev1.SecretVolumeSource{SecretName: secret}}}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1"},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func noAgent(p *corev1.Pod) { p.Spec.InitContainers = nil }

func clientWith(objs ...runtime.Object) *fake.Clientset {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secret, Namespace: ns}, Data: data(value)}
	return fake.NewClientset(append([]runtime.Object{s}, objs...)...)
}

// noLeak fails if a reason holds the Secret's value or a key.
func noLeak(t *testing.T, r Report, keys ...string) {
	t.Helper()
	b, _ := json.Marshal(r)
	for _, s := range append(keys, value) {
		if strings.Contains(string(b), s) {
			t.Fatal("the report holds the Secret's value or a content key")
		}
	}
}

func TestCheckStates(t *testing.T) {
	key := newKey(t)
	cur, old := id(t, key, data(value)), id(t, key, data("old"))
	closed := closedPort(t)
	for _, tc := range []struct {
		name   string
		port   func(t *testing.T) int32
		key    string
		opts   []podOpt
		state  string
		reason string
	}{
		{"current", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath, Loaded: cur, Seen: cur, State: "loaded", LoadedAt: "2026-12-01T01:02:03.5Z"}))
		}, key, nil, Current, ""},
		{"stale: the kubelet has not written it", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath, Loaded: old, Seen: old, State: "loaded"}))
		}, key, nil, Stale, "kubelet has not written"},
		{"stale: reload pending", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath, Loaded: old, Seen: cur, State: "pending"}))
		}, key, nil, Stale, "reload is pending"},
		{"stale: held", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath, Loaded: old, Seen: cur, State: "pending"}))
		}, key, []podOpt{func(p *corev1.Pod) {
			p.Annotations = map[string]string{wellknown.HeldAnnotation: "2026-12-01T12:00:00Z: refresh of secret db-creds restarts its pods one at a time"}
		}}, Stale, "reload is pending; its restart is held until its turn (k8secrets.io/restart-held: 2026-12-01T12:00:00Z: refresh"},
		{"notReady: loaded, the app crash-looping", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath, Loaded: cur, Seen: cur, State: "loaded"}))
		}, key, []podOpt{func(p *corev1.Pod) {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", RestartCount: 3,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off 40s restarting failed container"}}}}
		}}, NotReady, "loaded the current content, but the pod is not Ready: container app waiting: CrashLoopBackOff (restarts 3)"},
		{"current: Ready", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath, Loaded: cur, Seen: cur, State: "loaded", LoadedAt: "2026-12-01T01:02:03.5Z"}))
		}, key, []podOpt{func(p *corev1.Pod) {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		}}, Current, ""},
		{"stale: nothing loaded", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath + "/", Seen: cur, State: "pending"}))
		}, key, nil, Stale, "nothing loaded yet"},
		{"failed", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath, Loaded: old, Seen: cur, State: "failed", Error: "signal app (pid 7): operation not permitted"}))
		}, key, nil, Failed, "reload failed: signal app (pid 7): operation not permitted"},
		{"failed, older content", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath, Loaded: "", Seen: old, State: "failed", Error: "exit 1"}))
		}, key, nil, Failed, "kubelet has not written the current content"},
		{"refused", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath, Loaded: old, Seen: cur, State: "refused", Error: "tls.crt: not valid before 2027-01-01T00:00:00Z"}))
		}, key, nil, Refused, "content refused as invalid: tls.crt: not valid before"},
		{"unreachable", func(*testing.T) int32 { return closed }, key, nil, Unreachable, "connection refused"},
		{"unknown: no /status (404)", func(t *testing.T) int32 {
			return agent(t, func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
		}, key, nil, Unknown, "no /status (404)"},
		{"unknown: no key", func(t *testing.T) int32 {
			return agent(t, serve(directory{Path: mountPath, Loaded: cur, Seen: cur, State: "loaded"}))
		}, "", nil, Unknown, "has no " + contentid.KeyEnv},
		{"unknown: invalid key", func(t *testing.T) int32 { return closed }, "not-a-key", nil, Unknown, "not a valid content key"},
		{"unknown: no agent", func(t *testing.T) int32 { return closed }, key, []podOpt{noAgent}, Unknown, "no k8secrets agent for secret db-creds"},
		{"unknown: not keyed", func(t *testing.T) int32 {
			return agent(t, func(w http.ResponseWriter, _ *http.Request) {
				_ = json.NewEncoder(w).Encode(status{Agent: "v", Directories: []directory{{Path: mountPath, State: "loaded"}}})
			})
		}, key, nil, Unknown, "keyed: false"},
		{"unknown: not JSON", func(t *testing.T) int32 {
			return agent(t, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
		}, key, nil, Unknown, "not the JSON"},
		{"unknown: another directory", func(t *testing.T) int32 {
			return agent(t, func(w http.ResponseWriter, _ *http.Request) {
				_ = json.NewEncoder(w).Encode(status{Keyed: true, Directories: []directory{{Path: "/a", Loaded: cur}, {Path: "/b", Loaded: cur}}})
			})
		}, key, nil, Unknown, "reports no directory " + mountPath},
		{"unreachable: HTTP 500", func(t *testing.T) int32 {
			return agent(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) })
		}, key, nil, Unreachable, "HTTP 500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := clientWith(pod("web-5d8f-a", tc.port(t), tc.key, tc.opts...))
			r, err := Check(context.Background(), c, Options{Namespace: ns, Secret: secret, Via: Direct})
			if err != nil {
				t.Fatalf("Check = %v", err)
			}
			noLeak(t, r, key)
			if r.Via != Direct || r.Total != 1 || len(r.Pods) != 1 {
				t.Fatalf("Check = %+v; want one pod, via direct", r)
			}
			p := r.Pods[0]
			if p.State != tc.state || !strings.Contains(p.Reason, tc.reason) || p.Workload != "Deployment/web" {
				t.Errorf("Check(%s) = %s (%s), workload %q; want %s with a reason containing %q, workload Deployment/web", tc.name, p.State, p.Reason, p.Workload, tc.state, tc.reason)
			}
			if want := 0; tc.state == Current {
				if want = 1; p.Loaded != cur || p.LoadedAt.IsZero() || p.Agent != "v-test" {
					t.Errorf("Check(current) = %+v; want the loaded id, its time and the agent's version", p)
				}
				if r.Current != want {
					t.Errorf("Check.Current = %d; want %d", r.Current, want)
				}
			}
		})
	}
}

// Each pod is judged by the key in its own agent: an answer that is current
// under another pod's key is not current.
func TestCheckUsesEachPodsKey(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	cur1 := id(t, k1, data(value))
	loaded := directory{Path: mountPath, Loaded: cur1, Seen: cur1, State: "loaded"}
	c := clientWith(pod("web-5d8f-a", agent(t, serve(loaded)), k1), pod("web-5d8f-b", agent(t, serve(loaded)), k2))
	r, err := Check(context.Background(), c, Options{Namespace: ns, Secret: secret, Via: Direct})
	if err != nil {
		t.Fatal(err)
	}
	noLeak(t, r, k1, k2)
	if r.Current != 1 || r.Total != 2 || r.Pods[0].State != Current || r.Pods[1].State == Current {
		t.Errorf("Check = %+v; want web-5d8f-a current and web-5d8f-b not", r.Pods)
	}
	// Any other content: not current.
	if got := id(t, k1, data(value+"x")); got == cur1 {
		t.Fatal("contentid: two contents, one id")
	}
}

func TestCheckErrors(t *testing.T) {
	c := fake.NewClientset()
	_, err := Check(context.Background(), c, Options{Namespace: ns, Secret: secret, Via: Direct})
	if !errors.Is(err, ErrCannotVerify) || !strings.Contains(err.Error(), "secret shop/db-creds not found") {
		t.Errorf("Check(no secret) = %v; want ErrCannotVerify naming it", err)
	}
}

func TestWait(t *testing.T) {
	key := newKey(t)
	cur, old := id(t, key, data(value)), id(t, key, data("old"))
	var asked atomic.Int32
	// Reloads on the third question.
	reloading := agent(t, func(w http.ResponseWriter, r *http.Request) {
		d := directory{Path: mountPath, Loaded: old, Seen: cur, State: "pending"}
		if asked.Add(1) >= 3 {
			d.Loaded, d.State = cur, "loaded"
		}
		serve(d)(w, r)
	})
	var currentAsked atomic.Int32
	current := agent(t, func(w http.ResponseWriter, r *http.Request) {
		currentAsked.Add(1)
		serve(directory{Path: mountPath, Loaded: cur, Seen: cur, State: "loaded"})(w, r)
	})
	old404 := agent(t, func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	c := clientWith(pod("web-5d8f-a", reloading, key), pod("web-5d8f-b", current, key), pod("web-5d8f-c", old404, key))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Wait(ctx, c, Options{Namespace: ns, Secret: secret, Via: Direct})
	if err != nil || r.Current != 2 || r.Total != 3 {
		t.Fatalf("Wait = %+v, %v; want 2 of 3 current, the third unknown, no error", r, err)
	}
	if n := currentAsked.Load(); n != 1 {
		t.Errorf("the current pod was asked %d times; want once (its answer cannot change while the Secret stays)", n)
	}

	// One pod whose reload keeps failing: the wait ends with ctx, naming it.
	failing := agent(t, serve(directory{Path: mountPath, Loaded: old, Seen: cur, State: "failed", Error: "exit status 1"}))
	c = clientWith(pod("web-5d8f-a", current, key), pod("web-5d8f-d", failing, key))
	ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	r, err = Wait(ctx, c, Options{Namespace: ns, Secret: secret, Via: Direct})
	if !errors.Is(err, ErrNotVerified) || !strings.Contains(err.Error(), "web-5d8f-d (failed: reload failed: exit status 1)") || strings.Contains(err.Error(), "web-5d8f-a") {
		t.Errorf("Wait(one failing) = %v; want ErrNotVerified naming web-5d8f-d and its error, not web-5d8f-a", err)
	}
	if r.Current != 1 || r.Total != 2 {
		t.Errorf("Wait(one failing) report = %+v; want 1 of 2 current", r)
	}
	noLeak(t, r, key)
	if strings.Contains(err.Error(), key) || strings.Contains(err.Error(), value) {
		t.Fatal("the error holds the key or the Secret's value")
	}
}

// A Secret changed during the wait: pods current for the old content are
// asked again.
func TestWaitSecretChanged(t *testing.T) {
	key := newKey(t)
	c := clientWith()
	var want atomic.Value
	want.Store(id(t, key, data(value)))
	port := agent(t, func(w http.ResponseWriter, r *http.Request) {
		// Loads whatever the Secret holds now, one question late.
		s, _ := c.CoreV1().Secrets(ns).Get(r.Context(), secret, metav1.GetOptions{})
		now := id(t, key, s.Data)
		serve(directory{Path: mountPath, Loaded: want.Swap(now).(string), Seen: now, State: "pending"})(w, r)
	})
	if _, err := c.CoreV1().Pods(ns).Create(context.Background(), pod("web-5d8f-a", port, key), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	chk := newChecker(c, Options{Namespace: ns, Secret: secret, Via: Direct})
	if r, err := chk.check(ctx); err != nil || r.Current != 1 {
		t.Fatalf("check = %+v, %v; want current", r, err)
	}
	s, _ := c.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{})
	s.Data = data("new " + value)
	if _, err := c.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if r, err := chk.check(ctx); err != nil || r.Current != 0 || r.Pods[0].State != Stale {
		t.Fatalf("check after the Secret changed = %+v, %v; want stale (asked again, not remembered)", r, err)
	}
	if r, err := chk.check(ctx); err != nil || r.Current != 1 {
		t.Fatalf("check once loaded = %+v, %v; want current", r, err)
	}
}

func TestWorkloadOf(t *testing.T) {
	ctl := func(kind, name string) podOpt {
		return func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr.To(true)}}
		}
	}
	for _, tc := range []struct {
		p    *corev1.Pod
		want string
	}{
		{pod("web-5d8f-a", 1, ""), "Deployment/web"},
		{pod("db-0", 1, "", ctl("StatefulSet", "db")), "StatefulSet/db"},
		{pod("node-x", 1, "", ctl("DaemonSet", "node")), "DaemonSet/node"},
		{pod("rs-x", 1, "", ctl("ReplicaSet", "rs")), "ReplicaSet/rs"},
		{pod("bare", 1, "", func(p *corev1.Pod) { p.OwnerReferences = nil }), ""},
	} {
		if got := workloadOf(tc.p); got != tc.want {
			t.Errorf("workloadOf(%s) = %q; want %q", tc.p.Name, got, tc.want)
		}
	}
}

func TestPortOf(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int32
	}{
		{[]string{"--listen=:9600"}, 9600},
		{[]string{"--listen=0.0.0.0:9601"}, 9601},
		{nil, 9533},
	} {
		if got := portOf(&corev1.Container{Args: tc.args}); got != tc.want {
			t.Errorf("portOf(%q) = %d; want %d", tc.args, got, tc.want)
		}
	}
}

func TestResolve(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if got := resolve(Auto); got != Proxy {
		t.Errorf("resolve(auto) outside a cluster = %s; want proxy", got)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	if got := resolve(Auto); got != Direct {
		t.Errorf("resolve(auto) in a cluster = %s; want direct", got)
	}
	if got := resolve(Proxy); got != Proxy {
		t.Errorf("resolve(proxy) = %s", got)
	}
}

// Selector narrows the check to one workload's pods (the watch's rotation of
// one workload must not wait on a workload it has not refreshed yet).
func TestCheckSelector(t *testing.T) {
	key := newKey(t)
	cur := id(t, key, data(value))
	loaded := directory{Path: mountPath, Loaded: cur, Seen: cur, State: "loaded"}
	labelled := func(app string) podOpt { return func(p *corev1.Pod) { p.Labels["app"] = app } }
	c := clientWith(pod("web-5d8f-a", agent(t, serve(loaded)), key, labelled("web")),
		pod("api-7c9d-a", closedPort(t), key, labelled("api")))
	r, err := Check(context.Background(), c, Options{Namespace: ns, Secret: secret, Via: Direct, Selector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Total != 1 || r.Current != 1 || r.Pods[0].Name != "web-5d8f-a" {
		t.Errorf("Check with selector app=web = %+v; want web-5d8f-a alone, current", r.Pods)
	}
	r, err = Check(context.Background(), c, Options{Namespace: ns, Secret: secret, Via: Direct})
	if err != nil {
		t.Fatal(err)
	}
	if r.Total != 2 {
		t.Errorf("Check with no selector = %+v; want both pods", r.Pods)
	}
}

// A pod whose agent has not seen the current content (the kubelet wrote
// the old one: the refresh's poke reached it before its copy of the Secret
// changed) is poked again while the wait goes on; a restart-mode pod is
// not, since pods poked together would restart together.
func TestWaitPokesAgainPodsTheKubeletHasNotWritten(t *testing.T) {
	defer func(a, e time.Duration) { repokeAfter, repokeEvery = a, e }(repokeAfter, repokeEvery)
	repokeAfter, repokeEvery = 0, 50*time.Millisecond
	key := newKey(t)
	cur, old := id(t, key, data(value)), id(t, key, data("old"))
	var mu sync.Mutex
	poked := map[string]int{}
	pokes := func(name string) int { mu.Lock(); defer mu.Unlock(); return poked[name] }
	// The kubelet writes the current content at the pod's first poke.
	statusOf := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if pokes(name) > 0 {
				serve(directory{Path: mountPath, Loaded: cur, Seen: cur, State: "loaded"})(w, r)
				return
			}
			serve(directory{Path: mountPath, Loaded: old, Seen: old, State: "loaded"})(w, r)
		}
	}
	signal := func(p *corev1.Pod) { p.Spec.InitContainers[0].Args[1] = "--reload=signal:SIGHUP" }
	c := clientWith(pod("web-5d8f-s", agent(t, statusOf("web-5d8f-s")), key, signal), pod("web-5d8f-r", agent(t, statusOf("web-5d8f-r")), key))
	c.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		poked[a.(k8stesting.PatchAction).GetName()]++
		mu.Unlock()
		return false, nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, err := Wait(ctx, c, Options{Namespace: ns, Secret: secret, Via: Direct})
	if n := pokes("web-5d8f-s"); n != 1 {
		t.Errorf("the signal-mode pod was poked %d times; want once, then current", n)
	}
	if n := pokes("web-5d8f-r"); n != 0 {
		t.Errorf("the restart-mode pod was poked %d times by the wait; want none", n)
	}
	if !errors.Is(err, ErrNotVerified) || !strings.Contains(err.Error(), "web-5d8f-r (stale") || r.Current != 1 {
		t.Errorf("Wait = %+v, %v; want web-5d8f-s current and web-5d8f-r stale", r, err)
	}
}
