package main

// k8secrets-job watch against a real kube-apiserver, with the real
// verification (verify.Wait) that the watch package's own tests replace.

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/watch"
)

// A rotation whose pods cannot say what they loaded (injected with
// --no-agent: nothing in the pod reports, every pod is "unknown" to
// verify) is not called Verified: the Event on the Deployment, read back
// from the API server, is an Unverified Warning naming each pod. Before,
// it was a Verified Event saying "0 of 2 pods verified".
func TestAPIWatchUnknownPodsAreUnverified(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	if r := cl.job(injectArgs("app=web", "db-creds", "--no-agent")...); r.code != 0 {
		t.Fatalf("inject --no-agent: exit %d: %v", r.code, r.err)
	}
	cl.waitDeployment("web")

	ctx, stop := context.WithCancel(cl.ctx)
	done := make(chan result, 1)
	go func() {
		done <- cl.jobAs(ctx, cl.c, "watch", "--listen=", "--verify-via=direct", "--verify-timeout=20s")
	}()
	stopped := false
	stopWatch := func() result {
		stop()
		stopped = true
		select {
		case r := <-done:
			return r
		case <-time.After(time.Minute):
			t.Fatal("the watch did not stop within a minute of its context")
		}
		return result{}
	}
	defer func() {
		if !stopped {
			stopWatch()
		}
	}()
	recorded := func() string { return cl.get("web").Annotations[watch.RotatedPrefix+plan.ID("db-creds")] }
	poll := func(what string, cond func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(cl.ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	poll("the watch's baseline on web", func() bool { return recorded() != "" })
	baseline := recorded()

	s, err := cl.c.CoreV1().Secrets(cl.ns).Get(cl.ctx, "db-creds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data["password"] = []byte(secretValue + "-2")
	if _, err := cl.c.CoreV1().Secrets(cl.ns).Update(cl.ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]bool{watch.ReasonVerified: true, watch.ReasonUnverified: true, watch.ReasonReloadFailed: true}
	var got []string
	poll("the rotation's outcome recorded and told", func() bool {
		l, err := cl.c.EventsV1().Events(cl.ns).List(cl.ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got = nil
		for _, e := range l.Items {
			if e.ReportingController != watch.ReportingController || e.Regarding.Kind != "Deployment" || !outcomes[e.Reason] {
				continue
			}
			if strings.Contains(e.Note, secretValue) {
				t.Fatalf("a Secret value reached the note of a %s Event", e.Reason)
			}
			got = append(got, e.Type+" "+e.Reason+": "+e.Note)
		}
		return len(got) > 0 && recorded() != baseline
	})
	if len(got) != 1 || !strings.HasPrefix(got[0], corev1.EventTypeWarning+" "+watch.ReasonUnverified+": ") {
		t.Fatalf("outcome Events on Deployment web: %q; want one Warning %s", got, watch.ReasonUnverified)
	}
	for _, p := range cl.pods("web") {
		if p.DeletionTimestamp == nil && !strings.Contains(got[0], p.Name+" (unknown: no k8secrets agent") {
			t.Errorf("the %s Event does not name pod %s as unknown: %q", watch.ReasonUnverified, p.Name, got[0])
		}
	}
	if r := stopWatch(); r.code != 0 {
		t.Errorf("watch stopped by its context: exit %d (%v); want 0", r.code, r.err)
	}
}
