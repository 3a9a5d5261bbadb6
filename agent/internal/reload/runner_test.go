package reload

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is an Action that records when it ran and fails as told.
type recorder struct {
	mu     sync.Mutex
	times  []time.Time
	fail   int    // fail this many calls first
	kind   string // "exec" unless set
	during func() // called while reloading
}

func (r *recorder) Kind() string {
	if r.kind == "" {
		return "exec"
	}
	return r.kind
}

func (r *recorder) Reload(context.Context) error {
	if r.during != nil {
		r.during()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.times = append(r.times, time.Now())
	if r.fail > 0 {
		r.fail--
		return errors.New("app not ready")
	}
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.times)
}

func startRunner(t *testing.T, opts RunnerOptions) *Runner {
	t.Helper()
	r := NewRunner(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRunnerLeadingAndTrailingEdge(t *testing.T) {
	rec := &recorder{}
	interval := 300 * time.Millisecond
	r := startRunner(t, RunnerOptions{Actions: []Action{rec}, MinInterval: interval})

	start := time.Now()
	r.Notify()
	waitFor(t, "the leading reload", func() bool { return rec.count() == 1 })
	if d := rec.times[0].Sub(start); d > interval/2 {
		t.Errorf("first reload after %v; want at once", d)
	}
	// A burst inside the interval folds into exactly one more reload.
	for range 1000 {
		r.Notify()
	}
	waitFor(t, "the trailing reload", func() bool { return rec.count() == 2 })
	if d := rec.times[1].Sub(rec.times[0]); d < interval {
		t.Errorf("second reload %v after the first; want at least %v", d, interval)
	}
	time.Sleep(2 * interval)
	if n := rec.count(); n != 2 {
		t.Errorf("%d reloads; want 2", n)
	}
}

func TestRunnerRetriesWithBackoff(t *testing.T) {
	rec := &recorder{fail: 2}
	r := startRunner(t, RunnerOptions{Actions: []Action{rec}, BackoffInitial: 20 * time.Millisecond, BackoffMax: 40 * time.Millisecond})
	r.Notify()
	waitFor(t, "three attempts", func() bool { return rec.count() == 3 })
	if d := rec.times[2].Sub(rec.times[1]); d < 40*time.Millisecond {
		t.Errorf("second retry after %v; want the doubled backoff, 40ms", d)
	}
	time.Sleep(100 * time.Millisecond)
	if n := rec.count(); n != 3 {
		t.Errorf("%d attempts; want 3 (no retry after success)", n)
	}
}

func TestRunnerRetriesFromTheFailedAction(t *testing.T) {
	first, second := &recorder{}, &recorder{fail: 1}
	r := startRunner(t, RunnerOptions{Actions: []Action{first, second}, BackoffInitial: 10 * time.Millisecond})
	r.Notify()
	waitFor(t, "the retry", func() bool { return second.count() == 2 })
	if n := first.count(); n != 1 {
		t.Errorf("first action ran %d times; want 1", n)
	}
}

func TestRunnerGate(t *testing.T) {
	rec := &recorder{}
	var mu sync.Mutex
	gateErr := errors.New("tls.crt expired")
	r := startRunner(t, RunnerOptions{Actions: []Action{rec}, Gate: func() error {
		mu.Lock()
		defer mu.Unlock()
		return gateErr
	}})
	r.Notify()
	time.Sleep(100 * time.Millisecond)
	if n := rec.count(); n != 0 {
		t.Fatalf("%d reloads into invalid content; want 0", n)
	}
	mu.Lock()
	gateErr = nil
	mu.Unlock()
	r.Notify()
	waitFor(t, "the reload", func() bool { return rec.count() == 1 })
}

func TestRunnerRestartCoversChangesDuringIt(t *testing.T) {
	tests := []struct {
		kind string
		want int
	}{
		{"restart", 1}, // the restarted app reads the files anew
		{"signal", 2},  // the signalled app may have read them too early
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			var r *Runner
			rec := &recorder{kind: tt.kind}
			var once sync.Once
			rec.during = func() { once.Do(r.Notify) } // a change while the first runs
			r = startRunner(t, RunnerOptions{Actions: []Action{rec}, MinInterval: 50 * time.Millisecond})
			r.Notify()
			waitFor(t, "a reload", func() bool { return rec.count() >= 1 })
			time.Sleep(200 * time.Millisecond)
			if n := rec.count(); n != tt.want {
				t.Errorf("%d reloads; want %d", n, tt.want)
			}
		})
	}
}

// TestRunnerReportsFailures: each failed attempt is reported with its
// error (the watcher marks the content failed in /status), then the
// success; a success reports no failure.
func TestRunnerReportsFailures(t *testing.T) {
	rec := &recorder{fail: 2}
	var mu sync.Mutex
	var events []string
	record := func(e string) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, e)
	}
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), events...)
	}
	r := startRunner(t, RunnerOptions{
		Actions:        []Action{rec},
		BackoffInitial: time.Millisecond,
		OnFailure:      func(err error) { record("failure: " + err.Error()) },
		OnSuccess:      func() { record("success") },
	})
	r.Notify()
	waitFor(t, "the success after two failures", func() bool { return len(got()) == 3 })
	want := []string{"failure: app not ready", "failure: app not ready", "success"}
	if e := got(); !slices.Equal(e, want) {
		t.Errorf("events %q; want %q", e, want)
	}
	r.Notify()
	waitFor(t, "the next success", func() bool { return len(got()) == 4 })
	if e := got(); e[3] != "success" {
		t.Errorf("events %q; want a fourth success", e)
	}
}

// behindAction is an action that reports the app's processes as started
// before the content (stale) or not.
type behindAction struct {
	recorder
	stale  bool
	called atomic.Bool
}

func (b *behindAction) Behind() ([]Process, time.Time, error) {
	b.called.Store(true)
	if !b.stale {
		return nil, time.Time{}, nil
	}
	return []Process{{PID: 42, Comm: "app"}}, time.Now(), nil
}

// TestRunnerStartupReportsStale: the start-up check reports an app older
// than the content (OnStale, before its reload) and nothing for an app
// that has read it.
func TestRunnerStartupReportsStale(t *testing.T) {
	for _, stale := range []bool{true, false} {
		t.Run(fmt.Sprint("stale=", stale), func(t *testing.T) {
			a := &behindAction{stale: stale}
			var calls atomic.Int32
			var reloadsAtStale atomic.Int32
			r := startRunner(t, RunnerOptions{Actions: []Action{a}, OnStale: func() {
				calls.Add(1)
				reloadsAtStale.Store(int32(a.count()))
			}})
			r.NotifyStart()
			if stale {
				waitFor(t, "the start-up reload", func() bool { return a.count() == 1 })
				if calls.Load() != 1 || reloadsAtStale.Load() != 0 {
					t.Errorf("OnStale called %d times, after %d reloads; want once, before the reload", calls.Load(), reloadsAtStale.Load())
				}
				return
			}
			// The check has begun; a change's reload comes after it.
			waitFor(t, "the start-up check", a.called.Load)
			r.Notify()
			waitFor(t, "the change's reload", func() bool { return a.count() == 1 })
			if calls.Load() != 0 {
				t.Errorf("OnStale called %d times for an app that has the content; want 0", calls.Load())
			}
		})
	}
}
