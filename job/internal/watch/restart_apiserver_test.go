package watch

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/k8secrets/k8secrets/internal/wellknown"
)

// State survives the controller: a rotation is recorded on the workload
// only once done, so a change made while no replica runs is rotated by the
// next one (not lost), a replica started with nothing changed rotates
// nothing (not repeated), and a replica stopped mid-rotation leaves it
// unrecorded for its successor to finish.
func TestAPIWatchStateAfterRestart(t *testing.T) {
	f := newFx(t)
	// Rotations of web, by the Events on it (the Secret gets one too).
	onWeb := func(reason string) int { return f.eventsOn("Deployment/web", reason) }
	refreshed := func() int { return onWeb(ReasonRefreshed) }

	a := f.start("a", nil, nil)
	f.until("a's baseline", 30*time.Second, func() bool { return f.recorded("web") != "" })
	rv1 := f.setSecret("db", "v1", nil)
	f.until("a rotated v1", 30*time.Second, func() bool { return f.recorded("web") == "rv:"+rv1 })
	a.stop(t)
	if n := refreshed(); n != 1 {
		t.Fatalf("%d rotations after one change; want 1", n)
	}

	// Changed while nothing runs: b rotates it.
	rv2 := f.setSecret("db", "v2", nil)
	before := f.refreshedAt()
	b := f.start("b", nil, nil)
	f.until("b rotated v2", 30*time.Second, func() bool { return f.recorded("web") == "rv:"+rv2 })
	b.stop(t)
	if n := refreshed(); n != 2 {
		t.Errorf("%d rotations after a change made while stopped; want 2 (not lost)", n)
	}
	if after := f.refreshedAt(); after["web-0"] == before["web-0"] || after["web-1"] == before["web-1"] {
		t.Errorf("web's pods not refreshed for v2: before %v, after %v", before, after)
	}

	// Nothing changed: c rotates nothing. It has looked at web once it
	// has recorded the baseline of a workload injected after it started
	// (its loop runs every due workload at once), and Run returns only
	// after every sync it started has finished.
	before = f.refreshedAt()
	c := f.start("c", nil, nil)
	f.until("c leads", 30*time.Second, func() bool { return f.holder() == "c" })
	f.deployment("late", true, "signal:SIGHUP")
	f.until("c's baseline of a late Deployment", 30*time.Second, func() bool { return f.recorded("late") != "" })
	c.stop(t)
	if n := refreshed(); n != 2 {
		t.Errorf("%d rotations after a restart with nothing changed; want still 2 (not repeated)", n)
	}
	if after := f.refreshedAt(); !maps.Equal(after, before) {
		t.Errorf("pods poked by a restart with nothing changed: before %v, after %v", before, after)
	}

	// Stopped mid-rotation (pods poked, verification under way): not
	// recorded; e finishes it.
	inVerify := make(chan struct{}, 1)
	d := f.start("d", nil, func(o *Options) {
		o.Verify = func(ctx context.Context, ns, secret, _ string, _ func(context.Context) (*corev1.Secret, error)) (Verdict, error) {
			inVerify <- struct{}{}
			<-ctx.Done()
			return Verdict{Total: 2, Stale: []string{"web-0", "web-1"}}, ctx.Err()
		}
	})
	f.until("d leads", 30*time.Second, func() bool { return f.holder() == "d" })
	rv3 := f.setSecret("db", "v3", nil)
	select {
	case <-inVerify:
	case <-f.ctx.Done():
		t.Fatal("d never verified")
	}
	d.stop(t)
	if got := f.recorded("web"); got != "rv:"+rv2 {
		t.Fatalf("recorded %q after d was stopped mid-rotation; want still rv:%s", got, rv2)
	}
	if !strings.Contains(d.logs.String(), "rotation interrupted") && !strings.Contains(d.logs.String(), "verification interrupted") {
		t.Errorf("d's logs do not say the rotation was interrupted:\n%s", d.logs.String())
	}
	e := f.start("e", nil, nil)
	f.until("e finished v3", 30*time.Second, func() bool { return f.recorded("web") == "rv:"+rv3 })
	e.stop(t)
	if n := onWeb(ReasonVerified); n != 3 {
		t.Errorf("%d verified rotations (v1, v2, v3); want 3", n)
	}
}

// Two replicas: one leads and acts, the other stands by; when the leader
// is stopped (SIGTERM) it releases the Lease and the other takes over at
// once and acts alone.
func TestAPIWatchLeaderElection(t *testing.T) {
	f := newFx(t)
	a := f.start("a", nil, nil)
	b := f.start("b", nil, nil)
	f.until("a leader", 30*time.Second, func() bool { return f.holder() == "a" || f.holder() == "b" })
	f.until("the baseline", 30*time.Second, func() bool { return f.recorded("web") != "" })
	leader, standby := a, b
	if f.holder() == "b" {
		leader, standby = b, a
	}
	rv1 := f.setSecret("db", "v1", nil)
	f.until("rotated v1", 30*time.Second, func() bool { return f.recorded("web") == "rv:"+rv1 && len(f.events(ReasonVerified)) == 2 })
	for _, reason := range []string{ReasonRefreshed, ReasonVerified} {
		evs := f.events(reason)
		if len(evs) != 2 || !strings.HasSuffix(evs[0], " "+leader.id) || !strings.HasSuffix(evs[1], " "+leader.id) {
			t.Errorf("%s events %v; want two (Deployment, Secret), both from the leader %s", reason, evs, leader.id)
		}
	}

	start := time.Now()
	leader.stop(t)
	f.until("the standby takes over", 30*time.Second, func() bool { return f.holder() == standby.id })
	t.Logf("the standby led %s after the leader's SIGTERM", time.Since(start).Round(time.Millisecond))
	rv2 := f.setSecret("db", "v2", nil)
	f.until("rotated v2", 30*time.Second, func() bool { return f.recorded("web") == "rv:"+rv2 && len(f.events(ReasonVerified)) == 4 })
	evs := f.events(ReasonRefreshed)
	if len(evs) != 4 {
		t.Fatalf("Refreshed events %v; want 4: each rotation once", evs)
	}
	n := 0
	for _, e := range evs {
		if strings.HasSuffix(e, " "+standby.id) {
			n++
		}
	}
	if n != 2 {
		t.Errorf("Refreshed events %v; want the second rotation's two from %s", evs, standby.id)
	}
}

// --all-namespaces (Namespaces [""]): the same rotation, from informers
// over every namespace, still restricted by label and by Secret name.
func TestAPIWatchAllNamespaces(t *testing.T) {
	f := newFx(t)
	f.start("all", nil, func(o *Options) { o.Namespaces = []string{""} })
	f.until("the baseline", 30*time.Second, func() bool { return f.recorded("web") != "" })
	rv := f.setSecret("db", "v1", nil)
	f.until("rotated", 30*time.Second, func() bool {
		p := f.refreshedAt()
		return f.recorded("web") == "rv:"+rv && len(f.events(ReasonVerified)) == 2 && p["web-0"] != "" && p["web-1"] != ""
	})
	if p := f.refreshedAt(); p["plain-0"] != "" {
		t.Errorf("pod plain-0 of a Deployment that was not injected was refreshed")
	}
}

// The breaker survives the controller: a replica that trips it records the
// suspension on the workload; one started after it (a restart, a new
// leader) keeps the Secret's rotations suspended through more changes, and
// rotates once, to the last content, when the resume annotation is set,
// removing the mark.
func TestAPIWatchBreakerAfterRestart(t *testing.T) {
	f := newFx(t)
	onWeb := func(reason string) int { return f.eventsOn("Deployment/web", reason) }
	mark := func() string {
		d, err := f.c.AppsV1().Deployments(f.ns).Get(f.ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d.Annotations[SuspendedPrefix+"db"]
	}
	a := f.start("a", nil, nil)
	f.until("a's baseline", 30*time.Second, func() bool { return f.recorded("web") != "" })
	for i := range DefaultBreakerChanges + 1 {
		f.setSecret("db", fmt.Sprintf("v%d", i+1), nil)
	}
	f.until("the breaker trips and is marked on web", 30*time.Second, func() bool { return onWeb(ReasonRotationSuspended) == 1 && mark() != "" })
	a.stop(t)
	refreshed := onWeb(ReasonRefreshed)

	b := f.start("b", nil, nil)
	f.until("b leads", 30*time.Second, func() bool { return f.holder() == "b" })
	var last string
	for i := range 3 {
		last = f.setSecret("db", fmt.Sprintf("w%d", i+1), nil)
		time.Sleep(1500 * time.Millisecond) // more than b's --min-interval
	}
	if n := onWeb(ReasonRefreshed); n != refreshed {
		t.Fatalf("b rotated a Secret whose breaker a left open: %d Refreshed Events on web, %d before b", n, refreshed)
	}
	if !strings.Contains(b.logs.String(), "rotation still suspended") {
		t.Errorf("b's logs do not say it found the suspension:\n%s", b.logs.String())
	}
	f.setSecret("db", "", map[string]string{ResumeAnnotation: "now"})
	f.until("b rotates the last content once resumed", 30*time.Second, func() bool { return f.recorded("web") == "rv:"+last })
	f.until("the mark is removed", 30*time.Second, func() bool { return mark() == "" })
	b.stop(t)
	if n := onWeb(ReasonRefreshed); n != refreshed+1 {
		t.Errorf("%d Refreshed Events on web; want %d: one rotation after the resume", n, refreshed+1)
	}
}

// eventsOn counts the Events of reason on one object ("Kind/name").
func (f *fx) eventsOn(object, reason string) int {
	n := 0
	for _, e := range f.events(reason) {
		if strings.HasPrefix(e, object+" ") {
			n++
		}
	}
	return n
}

// A verification longer than the time given to the rotation's writes does
// not make its outcome Events and its record fail: they get time of their
// own. They failed with "context deadline exceeded", and the rotation was
// then repeated, when the restart series' verification waited out the
// kubelet's crash-loop backoff.
func TestAPIWatchSlowVerificationStillRecorded(t *testing.T) {
	defer func(d time.Duration, s func(*Controller) VerifyFunc) { writeTimeout, standIn = d, s }(writeTimeout, standIn)
	writeTimeout = time.Second
	standIn = func(*Controller) VerifyFunc {
		return func(ctx context.Context, _, _, _ string, _ func(context.Context) (*corev1.Secret, error)) (Verdict, error) {
			time.Sleep(2 * writeTimeout) // the pods take long
			return Verdict{Verified: 2, Total: 2}, nil
		}
	}
	f := newFx(t)
	f.start("a", nil, nil)
	f.until("a's baseline", 30*time.Second, func() bool { return f.recorded("web") != "" })
	rv := f.setSecret("db", "v1", nil)
	f.until("a rotated v1", 30*time.Second, func() bool { return f.recorded("web") == "rv:"+rv })
	f.until("Verified on web and on the Secret", 10*time.Second, func() bool {
		return f.eventsOn("Deployment/web", ReasonVerified) == 1 && f.eventsOn("Secret/db", ReasonVerified) == 1
	})
}

// restartSvc makes an injected restart-mode Deployment "svc" mounting
// "db", with two pods (Ready as given) and as many available in its status
// as are Ready; it returns a setter of that count and a getter of a pod's
// annotations.
func (f *fx) restartSvc(ready ...bool) (setAvailable func(int32), annotations func(string) map[string]string) {
	t := f.t
	t.Helper()
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "svc", Labels: map[string]string{wellknown.LabelInjected: "true"}},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "svc"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "svc"},
					Annotations: map[string]string{wellknown.AnnotationSecretPrefix + "db": "db"}},
				Spec: podSpec("db", "restart"),
			},
		},
	}
	if _, err := f.c.AppsV1().Deployments(f.ns).Create(f.ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	setAvailable = func(n int32) {
		t.Helper()
		cur, err := f.c.AppsV1().Deployments(f.ns).Get(f.ctx, "svc", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Status = appsv1.DeploymentStatus{ObservedGeneration: cur.Generation, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: n, AvailableReplicas: n}
		if _, err := f.c.AppsV1().Deployments(f.ns).UpdateStatus(f.ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var available int32
	for i, r := range ready {
		status := corev1.ConditionFalse
		if r {
			status, available = corev1.ConditionTrue, available+1
		}
		p, err := f.c.CoreV1().Pods(f.ns).Create(f.ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i), Labels: map[string]string{"app": "svc"}},
			Spec:       podSpec("db", "restart"),
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}}
		if _, err := f.c.CoreV1().Pods(f.ns).UpdateStatus(f.ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setAvailable(available)
	annotations = func(pod string) map[string]string {
		t.Helper()
		p, err := f.c.CoreV1().Pods(f.ns).Get(f.ctx, pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Annotations
	}
	return setAvailable, annotations
}

// released: both svc pods poked, neither held.
func released(annotations func(string) map[string]string) bool {
	for _, p := range []string{"svc-0", "svc-1"} {
		a := annotations(p)
		if _, held := a[wellknown.HeldAnnotation]; held || a[wellknown.RefreshAnnotation] == "" {
			return false
		}
	}
	return true
}

// TestAPIWatchPostponedRotationHoldsItsPods: a restart-mode Deployment
// with one of its two pods unavailable. Its rotation is postponed, and its
// pods are held meanwhile (k8secrets.io/restart-held): the kubelet may give
// them the new content on its own, and their agents must not restart them
// after --turn-hold while the workload has no room for one more down. Once
// it is available again the rotation pokes each pod, which releases it.
func TestAPIWatchPostponedRotationHoldsItsPods(t *testing.T) {
	f := newFx(t)
	setAvailable, annotations := f.restartSvc(true, false)
	f.start("a", nil, nil)
	f.until("a's baseline on svc", 30*time.Second, func() bool { return f.recorded("svc") != "" })
	f.setSecret("db", "v1", nil)
	f.until("both svc pods held", 30*time.Second, func() bool {
		return annotations("svc-0")[wellknown.HeldAnnotation] != "" && annotations("svc-1")[wellknown.HeldAnnotation] != ""
	})
	if n := f.eventsOn("Deployment/svc", ReasonRotationPostponed); n == 0 {
		t.Error("no RotationPostponed Event on Deployment/svc")
	}
	for _, p := range []string{"svc-0", "svc-1"} {
		if v := annotations(p)[wellknown.RefreshAnnotation]; v != "" {
			t.Errorf("pod %s poked (%s) while the rotation was postponed", p, v)
		}
	}

	setAvailable(2)
	f.until("both svc pods poked and released", time.Minute, func() bool { return released(annotations) })
}

// TestAPIWatchSuspendedRotationHoldsItsPods: a Secret that flaps trips the
// breaker; while its rotations are suspended the kubelet still delivers
// its content, so the restart-mode pods are held (no agent restarts its
// app on its own after --turn-hold), and the rotation after the resume
// releases them.
func TestAPIWatchSuspendedRotationHoldsItsPods(t *testing.T) {
	f := newFx(t)
	_, annotations := f.restartSvc(true, true)
	f.start("a", nil, func(o *Options) { o.Settle = 500 * time.Millisecond })
	f.until("a's baseline on svc", 30*time.Second, func() bool { return f.recorded("svc") != "" })
	for i := range DefaultBreakerChanges + 1 {
		f.setSecret("db", fmt.Sprintf("v%d", i+1), nil)
	}
	f.until("the breaker trips on svc", 30*time.Second, func() bool { return f.eventsOn("Deployment/svc", ReasonRotationSuspended) == 1 })
	f.until("both svc pods held while suspended", 30*time.Second, func() bool {
		return annotations("svc-0")[wellknown.HeldAnnotation] != "" && annotations("svc-1")[wellknown.HeldAnnotation] != ""
	})
	f.setSecret("db", "", map[string]string{ResumeAnnotation: "now"})
	f.until("both svc pods poked and released after the resume", time.Minute, func() bool { return released(annotations) })
}
