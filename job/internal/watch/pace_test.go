package watch

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/workload"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func defaults() *Pacer {
	return &Pacer{MinInterval: DefaultMinInterval, Changes: DefaultBreakerChanges, Window: DefaultBreakerWindow}
}

func TestPacerBudget(t *testing.T) {
	p := defaults()
	for _, tc := range []struct {
		name string
		at   time.Duration
		want time.Duration
	}{
		{"first rotation runs", 0, 0},
		{"3 s later waits the rest of the interval", 3 * time.Second, 7 * time.Second},
		{"9.5 s later still waits", 9500 * time.Millisecond, 500 * time.Millisecond},
		{"the interval after the first runs", 10 * time.Second, 0},
		{"right after that one waits a whole interval", 10 * time.Second, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.Take("Deployment/ns/web", t0.Add(tc.at)); got != tc.want {
				t.Errorf("Take(+%s) = %s; want %s", tc.at, got, tc.want)
			}
		})
	}
	if got := p.Take("Deployment/ns/other", t0.Add(10*time.Second)); got != 0 {
		t.Errorf("Take(another workload) = %s; want 0: the budget is per workload", got)
	}
}

func TestPacerBreaker(t *testing.T) {
	t.Run("a Secret updated every second for 60 s trips it once, at its 11th change", func(t *testing.T) {
		p := defaults()
		var trips []int
		for i := range 60 {
			if p.Changed("ns/s", t0.Add(time.Duration(i)*time.Second), "") {
				trips = append(trips, i)
			}
		}
		if fmt.Sprint(trips) != "[10]" {
			t.Fatalf("tripped at changes %v; want [10] (the 11th change)", trips)
		}
		end := t0.Add(59 * time.Second)
		susp, _, until := p.Suspended("ns/s", end, "")
		if !susp || !until.Equal(end.Add(DefaultBreakerWindow)) {
			t.Fatalf("Suspended(+59s) = %v until %s; want true until %s", susp, until, end.Add(DefaultBreakerWindow))
		}
		if susp, _, _ := p.Suspended("ns/s", until.Add(-time.Millisecond), ""); !susp {
			t.Errorf("resumed before the Secret was quiet for the window")
		}
		susp, resumed, _ := p.Suspended("ns/s", until, "")
		if susp || !resumed {
			t.Errorf("Suspended(quiet for the window) = %v, resumed %v; want false, true", susp, resumed)
		}
		if p.Open("ns/s") {
			t.Errorf("breaker still open after resuming")
		}
		// A fresh count after resuming: one more change does not trip it.
		if p.Changed("ns/s", until.Add(time.Second), "") {
			t.Errorf("one change after resuming tripped the breaker again")
		}
	})
	t.Run("a Secret updated every 30 s never trips it", func(t *testing.T) {
		p := defaults()
		for i := range 120 {
			if p.Changed("ns/s", t0.Add(time.Duration(i)*30*time.Second), "") {
				t.Fatalf("tripped at change %d", i)
			}
		}
	})
	t.Run("changing the resume annotation resumes at once", func(t *testing.T) {
		p := defaults()
		for i := range 11 {
			p.Changed("ns/s", t0.Add(time.Duration(i)*time.Second), "")
		}
		if susp, _, _ := p.Suspended("ns/s", t0.Add(11*time.Second), ""); !susp {
			t.Fatal("not suspended after 11 changes in 11 s")
		}
		if susp, resumed, _ := p.Suspended("ns/s", t0.Add(12*time.Second), "2026-01-01T00:00:12Z"); susp || !resumed {
			t.Errorf("Suspended(resume annotation set) = %v, resumed %v; want false, true", susp, resumed)
		}
	})
	t.Run("another Secret is not suspended", func(t *testing.T) {
		p := defaults()
		for i := range 11 {
			p.Changed("ns/a", t0.Add(time.Duration(i)*time.Second), "")
		}
		if susp, _, _ := p.Suspended("ns/b", t0.Add(11*time.Second), ""); susp {
			t.Error("ns/b suspended by ns/a's changes")
		}
	})
}

// rig is a controller on a fake clientset and a fake clock, whose Secret
// store and due list the test drives by hand: no informer, no goroutine, no
// sleep.
type rig struct {
	t      *testing.T
	c      *Controller
	clk    *clocktesting.FakeClock
	client *fake.Clientset
	secret *corev1.Secret
	// rotations lists the resourceVersion of the Secret each verification
	// saw (a rotation's verification reads the Secret as rotated).
	rotations []string
}

func newRig(t *testing.T) *rig {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", Labels: map[string]string{wellknown.LabelInjected: "true"}},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{
				Labels:      map[string]string{"app": "web"},
				Annotations: map[string]string{wellknown.AnnotationSecretPrefix + "db": "db"},
			}},
		},
	}
	r := &rig{t: t, clk: clocktesting.NewFakeClock(t0), client: fake.NewClientset(d)}
	r.secret = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", ResourceVersion: "100"}, Data: map[string][]byte{"password": []byte("v0")}}
	r.restart()
	return r
}

// restart replaces the controller with a new one, as a new replica (or a
// restarted one) starts: it knows only what the API holds.
func (r *rig) restart() {
	r.c = New(r.client, Options{
		Namespaces: []string{"ns"}, MinInterval: DefaultMinInterval, BreakerChanges: DefaultBreakerChanges, BreakerWindow: DefaultBreakerWindow,
		Settle: time.Second, VerifyTimeout: time.Second, Clock: r.clk, Metrics: NewMetrics(),
		Verify: func(ctx context.Context, ns, secret, _ string, _ func(context.Context) (*corev1.Secret, error)) (Verdict, error) {
			r.rotations = append(r.rotations, r.secret.ResourceVersion)
			return Verdict{Verified: 2, Total: 2}, nil
		},
	})
	r.c.listers[workload.Deployment] = func(ns, name string) (runtime.Object, error) {
		return r.client.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
	}
	r.c.getSecret = func(string) (*corev1.Secret, bool) { return r.secret, true }
	obj, _ := r.c.listers[workload.Deployment]("ns", "web")
	r.c.workloadChanged(obj)
	r.c.mu.Lock()
	r.c.secrets["ns/db"] = nil // no informer: getSecret serves it
	r.c.mu.Unlock()
	r.c.secretChanged("ns/db", nil, r.secret)
	r.runDue()
}

// runDue syncs, in the test's goroutine, every workload due by now.
func (r *rig) runDue() {
	for {
		now := r.clk.Now()
		var keys []string
		r.c.mu.Lock()
		for k, at := range r.c.due {
			if !at.After(now) {
				keys = append(keys, k)
				delete(r.c.due, k)
			}
		}
		r.c.mu.Unlock()
		if len(keys) == 0 {
			return
		}
		for _, k := range keys {
			r.c.slots <- struct{}{} // as the loop takes one for each sync
			r.c.sync(context.Background(), k)
			<-r.c.slots
		}
	}
}

// update changes the Secret's data (or only its annotations) as the
// informer would report it.
func (r *rig) update(data string, ann map[string]string) {
	old := r.secret
	s := old.DeepCopy()
	rv, _ := strconv.Atoi(old.ResourceVersion)
	s.ResourceVersion = strconv.Itoa(rv + 1)
	if data != "" {
		s.Data = map[string][]byte{"password": []byte(data)}
	}
	if ann != nil {
		s.Annotations = maps.Clone(ann)
	}
	r.secret = s
	r.c.secretChanged("ns/db", old, s)
	r.runDue()
}

func (r *rig) recorded() string {
	d, err := r.client.AppsV1().Deployments("ns").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	return d.Annotations[RotatedPrefix+"db"]
}

func (r *rig) events(reason string) int {
	l, _ := r.client.EventsV1().Events("ns").List(context.Background(), metav1.ListOptions{})
	n := 0
	for _, e := range l.Items {
		if e.Reason == reason {
			n++
		}
	}
	return n
}

// step advances the fake clock by d, one second at a time, running what
// falls due.
func (r *rig) step(d time.Duration) {
	for range int(d / time.Second) {
		r.clk.Step(time.Second)
		r.runDue()
	}
}

func TestWatchFirstSightIsABaseline(t *testing.T) {
	r := newRig(t)
	if len(r.rotations) != 0 {
		t.Errorf("rotations on first sight = %v; want none (the Job mounted the current content)", r.rotations)
	}
	if got := r.recorded(); got != "rv:100" {
		t.Errorf("recorded %q; want rv:100", got)
	}
}

func TestWatchMetadataOnlyChangeDoesNotRotate(t *testing.T) {
	r := newRig(t)
	r.update("", map[string]string{"owner": "team-a"})
	r.step(time.Minute)
	if len(r.rotations) != 0 {
		t.Errorf("rotations after a label-only change = %v; want none", r.rotations)
	}
}

func TestWatchFoldsChangesWithinMinInterval(t *testing.T) {
	r := newRig(t)
	r.update("v1", nil) // rv 101: rotated at once
	r.step(2 * time.Second)
	r.update("v2", nil) // rv 102
	r.step(2 * time.Second)
	r.update("v3", nil) // rv 103: folded with v2, rotated at +10 s
	if fmt.Sprint(r.rotations) != "[101]" {
		t.Fatalf("rotations before the interval ends = %v; want [101]", r.rotations)
	}
	r.step(6 * time.Second)
	if fmt.Sprint(r.rotations) != "[101 103]" {
		t.Fatalf("rotations = %v; want [101 103]: one per interval, the last content wins", r.rotations)
	}
	if got := r.recorded(); got != "rv:103" {
		t.Errorf("recorded %q; want rv:103", got)
	}
	r.step(time.Minute)
	if len(r.rotations) != 2 {
		t.Errorf("rotations after a quiet minute = %v; want no more", r.rotations)
	}
}

func TestWatchFlappingSecretTripsBreaker(t *testing.T) {
	r := newRig(t)
	for i := range 60 {
		r.update(fmt.Sprintf("v%d", i+1), nil) // rv 101 .. 160
		r.step(time.Second)
	}
	if n := len(r.rotations); n > 60/10+1 {
		t.Errorf("%d rotations in 60 s; want at most 7", n)
	}
	if !r.c.pace.Open("ns/db") {
		t.Fatal("breaker not open after 60 changes in 60 s")
	}
	if n := r.events(ReasonRotationSuspended); n != 2 {
		t.Errorf("%d RotationSuspended events; want 2 (the Secret and the Deployment)", n)
	}
	during := len(r.rotations)
	r.step(DefaultBreakerWindow - 2*time.Second)
	if len(r.rotations) != during {
		t.Fatalf("rotated while suspended: %v", r.rotations[during:])
	}
	r.step(3 * time.Second)
	if got := r.rotations[len(r.rotations)-1]; len(r.rotations) != during+1 || got != "160" {
		t.Errorf("after a quiet window: rotations %v; want one more, to rv 160 (the last content)", r.rotations)
	}
	if r.c.pace.Open("ns/db") {
		t.Error("breaker still open after a quiet window")
	}
	t.Logf("rotations: %v", r.rotations)
}

// A replica started while a Secret's breaker is open keeps its rotations
// suspended (the mark on the workload), rather than starting over with a
// closed breaker and rotating a flapping Secret every --min-interval; the
// resume annotation, or a quiet window from its start, resumes them, and
// the mark goes.
func TestWatchBreakerSurvivesRestart(t *testing.T) {
	r := newRig(t)
	for i := range 11 {
		r.update(fmt.Sprintf("v%d", i+1), nil) // rv 101 .. 111
		r.step(time.Second)
	}
	if !r.c.pace.Open("ns/db") {
		t.Fatal("breaker not open")
	}
	d, _ := r.client.AppsV1().Deployments("ns").Get(context.Background(), "web", metav1.GetOptions{})
	if d.Annotations[SuspendedPrefix+"db"] == "" {
		t.Fatalf("no %s mark on the Deployment: %v", SuspendedPrefix+"db", d.Annotations)
	}

	r.restart()
	if !r.c.pace.Open("ns/db") {
		t.Fatal("breaker closed after a restart")
	}
	before := len(r.rotations)
	for i := range 5 {
		r.update(fmt.Sprintf("w%d", i+1), nil) // rv 112 .. 116
		r.step(20 * time.Second)
	}
	if len(r.rotations) != before {
		t.Fatalf("rotated after the restart while suspended: %v", r.rotations[before:])
	}
	r.update("", map[string]string{ResumeAnnotation: "now"})
	if len(r.rotations) != before+1 || r.recorded() != "rv:116" {
		t.Errorf("after the resume annotation: rotations %v, recorded %q; want one more, to the last data (rv:116)", r.rotations, r.recorded())
	}
	d, _ = r.client.AppsV1().Deployments("ns").Get(context.Background(), "web", metav1.GetOptions{})
	if v, ok := d.Annotations[SuspendedPrefix+"db"]; ok {
		t.Errorf("mark %s=%s left after the resume", SuspendedPrefix+"db", v)
	}

	// Resumed, then restarted: nothing restored.
	r.restart()
	if r.c.pace.Open("ns/db") {
		t.Error("breaker open after a restart that followed a resume")
	}
}

// Restarted while suspended, with no further change: it resumes a quiet
// window after its start.
func TestWatchRestoredBreakerResumesWhenQuiet(t *testing.T) {
	r := newRig(t)
	for i := range 11 {
		r.update(fmt.Sprintf("v%d", i+1), nil)
		r.step(time.Second)
	}
	r.restart()
	before := len(r.rotations)
	r.step(DefaultBreakerWindow - 2*time.Second)
	if len(r.rotations) != before || !r.c.pace.Open("ns/db") {
		t.Fatalf("resumed before a quiet window from the restart: rotations %v", r.rotations[before:])
	}
	r.step(3 * time.Second)
	if len(r.rotations) != before+1 || r.recorded() != "rv:111" || r.c.pace.Open("ns/db") {
		t.Errorf("a quiet window after the restart: rotations %v, recorded %q; want one more, to rv:111, breaker closed", r.rotations, r.recorded())
	}
}

func TestWatchResumeAnnotation(t *testing.T) {
	r := newRig(t)
	for i := range 11 {
		r.update(fmt.Sprintf("v%d", i+1), nil)
		r.step(time.Second)
	}
	if !r.c.pace.Open("ns/db") {
		t.Fatal("breaker not open")
	}
	before := len(r.rotations)
	r.step(30 * time.Second)
	if len(r.rotations) != before {
		t.Fatalf("rotated while suspended")
	}
	r.update("", map[string]string{ResumeAnnotation: "now"})
	if len(r.rotations) != before+1 || r.recorded() != "rv:111" {
		t.Errorf("after the resume annotation: rotations %v, recorded %q; want one more, to the last data (rv:111)", r.rotations, r.recorded())
	}
	if r.c.pace.Open("ns/db") {
		t.Error("breaker still open after the resume annotation")
	}
}

// A rotation waiting for its pods' agents holds no slot: while maxParallel
// workloads wait for pods that never verify (each up to its
// --verify-timeout, an hour here), a change of another Secret is still
// rotated and verified at once. The loop runs as in the watch, on real
// goroutines.
func TestWatchVerificationHoldsNoSlot(t *testing.T) {
	client := fake.NewClientset()
	var mu sync.Mutex
	secrets := map[string]*corev1.Secret{}
	waiting := make(chan struct{}, maxParallel)
	verified := make(chan string, 1)
	c := New(client, Options{
		Namespaces: []string{"ns"}, MinInterval: DefaultMinInterval, BreakerChanges: DefaultBreakerChanges, BreakerWindow: DefaultBreakerWindow,
		Settle: time.Second, VerifyTimeout: time.Hour, Clock: clocktesting.NewFakeClock(t0), Metrics: NewMetrics(),
		Verify: func(ctx context.Context, ns, secret, selector string, _ func(context.Context) (*corev1.Secret, error)) (Verdict, error) {
			if secret == "other" {
				verified <- selector
				return Verdict{Verified: 1, Total: 1}, nil
			}
			waiting <- struct{}{}
			<-ctx.Done() // pods that never load the content
			return Verdict{Total: 1, Stale: []string{"stuck"}}, nil
		},
	})
	c.listers[workload.Deployment] = func(ns, name string) (runtime.Object, error) {
		return client.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
	}
	c.getSecret = func(key string) (*corev1.Secret, bool) {
		mu.Lock()
		defer mu.Unlock()
		s, ok := secrets[key]
		return s, ok
	}
	change := func(name, data string) {
		mu.Lock()
		old := secrets["ns/"+name]
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", ResourceVersion: "100"}, Data: map[string][]byte{"password": []byte(data)}}
		if old != nil {
			s.ResourceVersion = "101"
		}
		secrets["ns/"+name] = s
		mu.Unlock()
		c.mu.Lock()
		c.secrets["ns/"+name] = nil // no informer: getSecret serves it
		c.mu.Unlock()
		c.secretChanged("ns/"+name, old, s)
	}
	change("db", "v0")
	change("other", "v0")
	for i := range maxParallel + 1 {
		name, secret := fmt.Sprintf("w%d", i), "db"
		if i == maxParallel {
			secret = "other"
		}
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: map[string]string{wellknown.LabelInjected: "true"},
				// The recorded state is the first content: the next is a rotation.
				Annotations: map[string]string{RotatedPrefix + secret: "rv:100"}},
			Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{
					Labels:      map[string]string{"app": name},
					Annotations: map[string]string{wellknown.AnnotationSecretPrefix + secret: secret},
				}},
			},
		}
		if _, err := client.AppsV1().Deployments("ns").Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.workloadChanged(d)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.loop(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	change("db", "v1")
	for range maxParallel {
		select {
		case <-waiting:
		case <-time.After(30 * time.Second):
			t.Fatal("the rotations of secret db did not all reach their verification")
		}
	}
	change("other", "v1")
	select {
	case <-verified:
	case <-time.After(30 * time.Second):
		t.Errorf("secret other not rotated while %d workloads wait for their pods", maxParallel)
	}
}

// The outcome of a rotation is told by what its verification found:
// Verified only when every pod has loaded the new content; pods that could
// not say what they loaded (unknown, unreachable) make it Unverified, a
// Warning naming them, never Verified ("0 of 10 pods verified" was what a
// rotation on kwok, where no agent answers, said before).
func TestWatchRotationOutcome(t *testing.T) {
	for _, tc := range []struct {
		name    string
		verdict Verdict
		err     error
		reason  string
		typ     string
		result  string
		note    []string
	}{
		{name: "every pod verified", verdict: Verdict{Verified: 2, Total: 2},
			reason: ReasonVerified, typ: corev1.EventTypeNormal, result: "verified", note: []string{"2 of 2 pods verified"}},
		{name: "no pod can say", verdict: Verdict{Total: 2, Unknown: []string{"web-0 (unknown: its agent has no /status (404))", "web-1 (unknown: its agent has no /status (404))"}},
			reason: ReasonUnverified, typ: corev1.EventTypeWarning, result: "unknown", note: []string{"2 of 2 pods", "could not say what they loaded", "web-0 (unknown", "web-1 (unknown", "0 verified"}},
		{name: "one verified, one unreachable", verdict: Verdict{Verified: 1, Total: 2, Unknown: []string{"web-1 (unreachable: connection refused)"}},
			reason: ReasonUnverified, typ: corev1.EventTypeWarning, result: "unknown", note: []string{"1 of 2 pods", "web-1 (unreachable", "1 verified"}},
		{name: "stale and unknown", verdict: Verdict{Total: 2, Stale: []string{"web-0 (failed: exit 1)"}, Unknown: []string{"web-1 (unknown: no key)"}},
			reason: ReasonReloadFailed, typ: corev1.EventTypeWarning, result: "stale", note: []string{"1 of 2 pods do not run its current content", "web-0 (failed", "1 could not say what they loaded: web-1"}},
		{name: "verification impossible", err: errors.New("cannot verify the pods: pods/proxy forbidden"),
			reason: ReasonReloadFailed, typ: corev1.EventTypeWarning, result: "unverified", note: []string{"could not verify the pods of Deployment"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.c.verify = func(context.Context, string, string, string, func(context.Context) (*corev1.Secret, error)) (Verdict, error) {
				return tc.verdict, tc.err
			}
			r.update("v1", nil)
			evs, err := r.client.EventsV1().Events("ns").List(context.Background(), metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range evs.Items {
				if e.Reason == ReasonRefreshed {
					continue
				}
				got = append(got, e.Regarding.Kind+" "+e.Type+" "+e.Reason)
				if e.Regarding.Kind != "Deployment" {
					continue
				}
				for _, want := range tc.note {
					if !strings.Contains(e.Note, want) {
						t.Errorf("%s Event's note %q; want it to hold %q", e.Reason, e.Note, want)
					}
				}
			}
			slices.Sort(got)
			want := []string{"Deployment " + tc.typ + " " + tc.reason, "Secret " + tc.typ + " " + tc.reason}
			if !slices.Equal(got, want) {
				t.Errorf("outcome Events %v; want %v", got, want)
			}
			var metrics strings.Builder
			r.c.m.WritePrometheus(&metrics)
			if line := fmt.Sprintf("k8secrets_watch_rotations_total{result=%q} 1", tc.result); !strings.Contains(metrics.String(), line) {
				t.Errorf("/metrics lacks %s:\n%s", line, metrics.String())
			}
			if got := r.recorded(); got != "rv:101" {
				t.Errorf("recorded %q; want rv:101 (recorded whatever the outcome: poking again would not change it)", got)
			}
		})
	}
}

// A change of a Secret that several workloads mount: each workload gets its
// own Refreshed and outcome Events, the Secret two in all (Refreshed once,
// and one outcome summing up the workloads'), not two per workload.
func TestWatchSecretEventsPerChange(t *testing.T) {
	r := newRig(t)
	for _, name := range []string{"api", "jobs"} {
		d, err := r.client.AppsV1().Deployments("ns").Get(context.Background(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d = d.DeepCopy()
		d.ObjectMeta = metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: d.Labels,
			Annotations: map[string]string{RotatedPrefix + "db": d.Annotations[RotatedPrefix+"db"]}}
		d.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}}
		d.Spec.Template.Labels = map[string]string{"app": name}
		if d, err = r.client.AppsV1().Deployments("ns").Create(context.Background(), d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		r.c.workloadChanged(d)
	}
	r.runDue()
	unknown := "app=api"
	r.c.verify = func(_ context.Context, _, _, selector string, _ func(context.Context) (*corev1.Secret, error)) (Verdict, error) {
		if selector == unknown {
			return Verdict{Verified: 1, Total: 2, Unknown: []string{"api-1 (unknown: its agent has no /status (404))"}}, nil
		}
		return Verdict{Verified: 2, Total: 2}, nil
	}
	on := func(kind string) []string {
		t.Helper()
		l, err := r.client.EventsV1().Events("ns").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range l.Items {
			if e.Regarding.Kind == kind {
				out = append(out, e.Regarding.Name+" "+e.Type+" "+e.Reason+": "+e.Note)
			}
		}
		slices.Sort(out)
		return out
	}
	reasons := func(evs []string) []string {
		var out []string
		for _, e := range evs {
			head, _, _ := strings.Cut(e, ":")
			out = append(out, head)
		}
		return out
	}

	r.update("v1", nil)
	got := on("Secret")
	want := []string{"db Normal Refreshed", "db Warning Unverified"}
	if !slices.Equal(reasons(got), want) {
		t.Fatalf("Events on the Secret after one change = %q; want %v", got, want)
	}
	for _, s := range []string{"3 workloads rotated", "2 verified", "1 with pods that could not say what they loaded (Deployment/api)", "5 of 6 pods verified"} {
		if !strings.Contains(got[1], s) {
			t.Errorf("the Secret's summary %q does not say %q", got[1], s)
		}
	}
	if !strings.Contains(got[0], "the 3 workloads that mount it") {
		t.Errorf("the Secret's Refreshed Event %q does not say how many workloads mount it", got[0])
	}
	want = []string{
		"api Normal Refreshed", "api Warning Unverified", "jobs Normal Refreshed", "jobs Normal Verified",
		"web Normal Refreshed", "web Normal Verified",
	}
	if got := reasons(on("Deployment")); !slices.Equal(got, want) {
		t.Errorf("Events on the Deployments = %v; want %v", got, want)
	}

	// The next change, every pod verified: two more on the Secret.
	unknown = ""
	r.step(DefaultMinInterval)
	r.update("v2", nil)
	got = on("Secret")
	want = []string{"db Normal Refreshed", "db Normal Refreshed", "db Normal Verified", "db Warning Unverified"}
	if !slices.Equal(reasons(got), want) {
		t.Fatalf("Events on the Secret after two changes = %q; want %v", got, want)
	}
	if n := len(on("Deployment")); n != 12 {
		t.Errorf("%d Events on the Deployments after two changes; want 12 (Refreshed and an outcome each time)", n)
	}
}
