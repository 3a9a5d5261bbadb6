package watch

import (
	"slices"
	"testing"
	"time"
)

// One change of a Secret that three injected Deployments mount, against a
// real API server: each Deployment gets its Refreshed and Verified Events,
// the Secret one of each (not three), as read back from the API server.
func TestAPIWatchSecretEventsPerChange(t *testing.T) {
	f := newFx(t)
	for _, name := range []string{"api", "jobs"} {
		f.deployment(name, true, "signal:SIGHUP")
		f.pod(name+"-0", name)
		f.pod(name+"-1", name)
	}
	f.start("a", nil, nil)
	f.until("baselines recorded", 30*time.Second, func() bool {
		return f.recorded("web") != "" && f.recorded("api") != "" && f.recorded("jobs") != ""
	})
	f.setSecret("db", "v1", nil)
	f.until("every Deployment and the Secret verified", 30*time.Second, func() bool {
		return len(f.events(ReasonVerified)) == 4
	})
	time.Sleep(time.Second) // any Event written late would show
	for _, reason := range []string{ReasonRefreshed, ReasonVerified} {
		got := f.events(reason)
		slices.Sort(got)
		want := []string{"Deployment/api a", "Deployment/jobs a", "Deployment/web a", "Secret/db a"}
		if !slices.Equal(got, want) {
			t.Errorf("%s Events %v; want %v: one on each Deployment and one on the Secret", reason, got, want)
		}
	}
	if got := f.refreshedAt(); got["api-1"] == "" || got["jobs-0"] == "" || got["web-1"] == "" {
		t.Errorf("pods not refreshed: %v", got)
	}
	if bad := append(f.events(ReasonUnverified), f.events(ReasonReloadFailed)...); len(bad) > 0 {
		t.Errorf("Unverified or ReloadFailed Events %v; want none", bad)
	}
}
