package refresh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/k8secrets/k8secrets/internal/wellknown"
)

const agent = "k8secrets-agent-db-creds"

func mountingPod(name, reload string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("uid-" + name)},
		Spec: corev1.PodSpec{
			Volumes:        []corev1.Volume{{Name: "k8secrets-db-creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db-creds"}}}},
			InitContainers: []corev1.Container{{Name: agent, Args: []string{"--reload=" + reload}}},
			Containers:     []corev1.Container{{Name: "app"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

func opts(settle time.Duration) Options {
	return Options{Namespace: "shop", Secret: "db-creds", AgentName: agent, Settle: settle}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// The pod list is paged (Limit and Continue), and every page's pods are
// refreshed.
func TestPodsPagesTheList(t *testing.T) {
	var objs []runtime.Object
	for i := range 5 {
		objs = append(objs, mountingPod("web-"+strconv.Itoa(i), "signal:SIGHUP"))
	}
	objs = append(objs, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "shop"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}})
	c := fake.NewClientset(objs...)
	// The fake ignores Limit; serve pages of Limit items, as the API server does.
	var limits []int64
	var continues []string
	c.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		lo := a.(k8stesting.ListActionImpl).ListOptions
		limits, continues = append(limits, lo.Limit), append(continues, lo.Continue)
		all, err := c.Tracker().List(corev1.SchemeGroupVersion.WithResource("pods"), corev1.SchemeGroupVersion.WithKind("Pod"), "shop")
		if err != nil {
			return true, nil, err
		}
		items := all.(*corev1.PodList).Items
		start, _ := strconv.Atoi(lo.Continue)
		end := min(start+int(lo.Limit), len(items))
		page := &corev1.PodList{Items: items[start:end]}
		if end < len(items) {
			page.Continue = strconv.Itoa(end)
		}
		return true, page, nil
	})
	defer func(n int64) { pageSize = n }(pageSize)
	pageSize = 2

	res, err := Pods(context.Background(), c, opts(time.Minute), quiet)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 5 {
		t.Errorf("Pods refreshed %d pods; want the 5 that mount the Secret, over every page: %+v", len(res), res)
	}
	if len(limits) != 3 || limits[0] != 2 || continues[1] != "2" || continues[2] != "4" {
		t.Errorf("list requests: limits %v, continues %q; want 3 pages of 2 following Continue", limits, continues)
	}
	for i := range 5 {
		p, _ := c.CoreV1().Pods("shop").Get(context.Background(), "web-"+strconv.Itoa(i), metav1.GetOptions{})
		if _, ok := p.Annotations[wellknown.RefreshAnnotation]; !ok {
			t.Errorf("pod %s not annotated", p.Name)
		}
	}
}

// A pod that vanished before its patch (404) is reported gone and the
// refresh carries on; no settle time is spent on it. Settle is an hour here:
// spending it would end the test's context instead, and the pod would not be
// reported gone.
func TestPodsGoneBeforePatch(t *testing.T) {
	c := fake.NewClientset(mountingPod("web-0", "restart"), mountingPod("web-1", "signal:SIGHUP"))
	c.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.PatchAction).GetName() == "web-0" {
			return true, nil, apierrors.NewNotFound(corev1.Resource("pods"), "web-0")
		}
		return false, nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Pods(ctx, c, opts(time.Hour), quiet)
	if err != nil {
		t.Fatalf("Pods = %v; want the vanished pod skipped", err)
	}
	got := map[string]Result{}
	for _, r := range res {
		got[r.Pod] = r
	}
	if !got["web-0"].Gone || got["web-0"].Detail != Gone || got["web-1"].Gone || len(res) != 2 {
		t.Errorf("Pods = %+v; want web-0 gone and web-1 refreshed", res)
	}
}

// A pod deleted while the refresh waits for its app to restart ends the
// wait at once (gone), and the next pod is refreshed.
func TestPodsGoneWhileWaiting(t *testing.T) {
	c := fake.NewClientset(mountingPod("web-0", "restart"), mountingPod("web-1", "restart"))
	gvr := corev1.SchemeGroupVersion.WithResource("pods")
	c.PrependWatchReactor("pods", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := c.Tracker().Watch(gvr, "shop")
		if err != nil {
			return true, nil, err
		}
		// Once the wait watches: web-0 is deleted (a rollout, an
		// eviction), web-1's app restarts and is Ready.
		go func() {
			if _, err := c.Tracker().Get(gvr, "shop", "web-0"); err == nil {
				_ = c.Tracker().Delete(gvr, "shop", "web-0")
				return
			}
			p := mountingPod("web-1", "restart")
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", RestartCount: 1, Ready: true}}
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
			_ = c.Tracker().Update(gvr, p, "shop")
		}()
		return true, w, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Pods(ctx, c, opts(time.Hour), quiet)
	if err != nil {
		t.Fatalf("Pods = %v; want the deleted pod reported gone", err)
	}
	if len(res) != 2 || !res[0].Gone || res[0].Pod != "web-0" || !res[1].Restarted || res[1].Pod != "web-1" {
		t.Errorf("Pods = %+v; want web-0 gone, then web-1 restarted", res)
	}
}

// Pods whose agents reload by signal or HTTP are poked concurrently, at most
// parallel at once, and reported in the list's order; a failed poke fails
// the refresh, naming its pod. Served over HTTP: the fake clientset runs its
// reactors one at a time.
func TestPodsPokesConcurrently(t *testing.T) {
	const n = 40
	list := &corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}}
	for i := range n {
		list.Items = append(list.Items, *mountingPod(fmt.Sprintf("web-%02d", i), "signal:SIGHUP"))
	}
	var inFlight, most, patches atomic.Int32
	var failing atomic.Value
	failing.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.Method {
		case http.MethodGet:
			_ = json.NewEncoder(w).Encode(list)
		case http.MethodPatch:
			patches.Add(1)
			cur := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := most.Load(); cur > m && !most.CompareAndSwap(m, cur); m = most.Load() {
			}
			time.Sleep(20 * time.Millisecond)
			name := path.Base(r.URL.Path)
			if name == failing.Load() {
				w.WriteHeader(http.StatusInternalServerError)
				_ = json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure, Code: 500, Message: "etcd is down"})
				return
			}
			_ = json.NewEncoder(w).Encode(mountingPod(name, "signal:SIGHUP"))
		}
	}))
	defer srv.Close()
	client := kubernetes.NewForConfigOrDie(&rest.Config{Host: srv.URL, QPS: -1})

	res, err := Pods(context.Background(), client, opts(time.Minute), quiet)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != n {
		t.Fatalf("Pods refreshed %d pods; want %d", len(res), n)
	}
	for i, r := range res {
		if want := fmt.Sprintf("web-%02d", i); r.Pod != want {
			t.Fatalf("result %d is %s; want %s (the list's order)", i, r.Pod, want)
		}
	}
	if m := most.Load(); m < 2 || m > parallel {
		t.Errorf("at most %d pokes in flight; want between 2 and %d", m, parallel)
	}

	failing.Store("web-07")
	patches.Store(0)
	_, err = Pods(context.Background(), client, opts(time.Minute), quiet)
	if err == nil || !strings.Contains(err.Error(), "shop/web-07") || !strings.Contains(err.Error(), "etcd is down") {
		t.Errorf("Pods with web-07's patch failing = %v; want an error naming shop/web-07 and the cause", err)
	}
	if p := patches.Load(); p >= n {
		t.Errorf("%d of %d pods patched after web-07's patch failed; want the pokes not yet sent stopped", p, n)
	}
}

// A restart-mode pod whose app has not gone down is poked again every
// repokeEvery while the refresh waits (its first poke may have reached the
// kubelet before the new Secret did); once the app is down, it is not.
func TestPodsRepokesUntilTheAppGoesDown(t *testing.T) {
	defer func(d time.Duration) { repokeEvery = d }(repokeEvery)
	repokeEvery = 20 * time.Millisecond
	for _, c := range []struct {
		name  string
		ready corev1.ConditionStatus
		most  bool // more than one poke
	}{
		{"running", corev1.ConditionTrue, true},
		{"down", corev1.ConditionFalse, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := mountingPod("web-0", "restart")
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: c.ready}}
			client := fake.NewClientset(p)
			var patches atomic.Int32
			client.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
				patches.Add(1)
				return false, nil, nil
			})
			res, err := Pods(context.Background(), client, opts(300*time.Millisecond), quiet)
			if c.most && err != nil {
				t.Fatal(err)
			}
			if !c.most && err != nil {
				// The last (only) pod: nothing else to keep down.
				t.Fatalf("Pods = %v; want no error: no pod follows", err)
			}
			if len(res) != 1 || res[0].Restarted {
				t.Fatalf("Pods = %+v; want web-0 not restarted", res)
			}
			if !c.most && !strings.Contains(res[0].Detail, "was not Ready before its refresh") {
				t.Errorf("detail %q; want it to say the pod was not Ready before", res[0].Detail)
			}
			n := patches.Load()
			if c.most && n < 3 {
				t.Errorf("%d pokes in 300ms; want one every 20ms while the app runs", n)
			}
			if !c.most && n != 1 {
				t.Errorf("%d pokes; want 1: the app was down already", n)
			}
		})
	}
}

// A restart-mode pod whose app went down and is not Ready again within
// settle stops the refresh: the next pod is not poked, so that two are
// never down at once (the kubelet's crash-loop backoff made a restart take
// 40 s and more on the fourth rotation within 10 minutes).
func TestPodsStopsWhileARestartedPodIsDown(t *testing.T) {
	defer func(d time.Duration) { repokeEvery = d }(repokeEvery)
	repokeEvery = 20 * time.Millisecond
	a, b := mountingPod("web-0", "restart"), mountingPod("web-1", "restart")
	for _, p := range []*corev1.Pod{a, b} {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	}
	client := fake.NewClientset(a, b)
	poked := map[string]int{}
	var mu sync.Mutex
	client.PrependReactor("patch", "pods", func(act k8stesting.Action) (bool, runtime.Object, error) {
		name := act.(k8stesting.PatchAction).GetName()
		if !strings.Contains(string(act.(k8stesting.PatchAction).GetPatch()), wellknown.RefreshAnnotation) {
			return false, nil, nil // a hold, not a poke
		}
		mu.Lock()
		poked[name]++
		first := poked[name] == 1
		mu.Unlock()
		if !first {
			return false, nil, nil
		}
		// The first poke takes the app down (its agent restarts it), and
		// the kubelet's backoff keeps it down past settle.
		p, err := client.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), "shop", name)
		if err != nil {
			return true, nil, err
		}
		pod := p.(*corev1.Pod).DeepCopy()
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
		if err := client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), pod, "shop"); err != nil {
			return true, nil, err
		}
		return false, nil, nil
	})
	res, err := Pods(context.Background(), client, opts(300*time.Millisecond), quiet)
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "web-0") {
		t.Fatalf("Pods = %v; want ErrNotReady naming web-0", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if poked["web-1"] != 0 {
		t.Errorf("web-1 poked %d times while web-0 was down; want none", poked["web-1"])
	}
	if len(res) != 1 || res[0].Pod != "web-0" || res[0].Restarted {
		t.Errorf("Pods = %+v; want web-0 only, not restarted", res)
	}
	// web-1 is held: its agent, given the new content by the kubelet's
	// own sync, must not restart it after --turn-hold while web-0 is down.
	// web-0's poke released it.
	for name, want := range map[string]bool{"web-0": false, "web-1": true} {
		p, err := client.CoreV1().Pods("shop").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if held := p.Annotations[wellknown.HeldAnnotation]; (held != "") != want {
			t.Errorf("%s: %s = %q; want held %v", name, wellknown.HeldAnnotation, held, want)
		}
	}
	if !strings.Contains(err.Error(), "the 1 left are held") {
		t.Errorf("error %q; want it to say the pod left is held", err)
	}
}

// A pass that ends leaves no pod held: each poke released its pod.
func TestPodsReleasesEveryPodItHeld(t *testing.T) {
	var pods []runtime.Object
	for i := range 3 {
		p := mountingPod(fmt.Sprintf("web-%d", i), "restart")
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		pods = append(pods, p)
	}
	client := fake.NewClientset(pods...)
	var held []string
	var mu sync.Mutex
	client.PrependReactor("patch", "pods", func(act k8stesting.Action) (bool, runtime.Object, error) {
		pa := act.(k8stesting.PatchAction)
		if strings.Contains(string(pa.GetPatch()), wellknown.RefreshAnnotation) {
			return false, nil, nil
		}
		mu.Lock()
		held = append(held, pa.GetName())
		mu.Unlock()
		return false, nil, nil
	})
	// No restart comes (settle short): each pod is left as it is, and the
	// pass goes on, as with content that did not change.
	if _, err := Pods(context.Background(), client, opts(50*time.Millisecond), quiet); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	slices.Sort(held)
	if !slices.Equal(held, []string{"web-1", "web-2"}) {
		t.Errorf("held %v; want web-1 and web-2, the pods after the first", held)
	}
	mu.Unlock()
	for i := range 3 {
		p, err := client.CoreV1().Pods("shop").Get(context.Background(), fmt.Sprintf("web-%d", i), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := p.Annotations[wellknown.HeldAnnotation]; ok || p.Annotations[wellknown.RefreshAnnotation] == "" {
			t.Errorf("web-%d: annotations %v; want poked and no longer held", i, p.Annotations)
		}
	}
}
