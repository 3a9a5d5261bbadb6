package reload

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newTurn returns a started Turn on a file holding initial ("" leaves the
// file missing, as before the annotation is ever set).
func newTurn(t *testing.T, initial string, hold, fresh time.Duration) (*Turn, func(string)) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "refreshed-at")
	write := func(v string) {
		t.Helper()
		// As the kubelet's atomic writer: a new file renamed over the old.
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	if initial != "" {
		write(initial)
	}
	turn := &Turn{File: file, Hold: hold, Fresh: fresh, Every: 10 * time.Millisecond, Poll: 5 * time.Millisecond}
	if err := turn.Start(); err != nil {
		t.Fatal(err)
	}
	return turn, write
}

func wait(t *testing.T, turn *Turn) string {
	t.Helper()
	why, ok := turn.Wait(context.Background(), slog.New(slog.DiscardHandler))
	if !ok {
		t.Fatal("Wait ended without its context ending")
	}
	return why
}

func TestTurnHoldsUntilThePodIsPoked(t *testing.T) {
	turn, write := newTurn(t, "2026-12-01T08:00:00Z", time.Minute, time.Second)
	go func() {
		time.Sleep(50 * time.Millisecond)
		write("2026-12-01T09:00:00Z")
	}()
	if why := wait(t, turn); !strings.Contains(why, "turn (") {
		t.Fatalf("Wait returned %q; want the pod's turn", why)
	}
}

func TestTurnWithoutPokeWaitsTheHold(t *testing.T) {
	// The annotation the pod started with is no one's turn, nor is a
	// missing file.
	for _, initial := range []string{"2026-12-01T08:00:00Z", ""} {
		turn, _ := newTurn(t, initial, 100*time.Millisecond, time.Minute)
		start := time.Now()
		why := wait(t, turn)
		if !strings.Contains(why, "no turn given within 100ms") {
			t.Fatalf("initial %q: Wait returned %q; want the hold to run out", initial, why)
		}
		if d := time.Since(start); d < 100*time.Millisecond {
			t.Fatalf("initial %q: Wait returned after %v, before the hold of 100ms", initial, d)
		}
	}
}

func TestTurnPokeJustBeforeTheContentCounts(t *testing.T) {
	// The kubelet may write the annotation's file a moment before the
	// Secret's: the background reading dates it, and the restart that
	// follows within Fresh goes ahead at once.
	turn, write := newTurn(t, "a", time.Minute, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go turn.Run(ctx)
	write("b")
	time.Sleep(50 * time.Millisecond) // Run sees it
	if why := wait(t, turn); !strings.Contains(why, "turn (") {
		t.Fatalf("Wait returned %q; want the pod's turn", why)
	}
}

func TestTurnOldPokeDoesNotCount(t *testing.T) {
	// A poke that came with no new content (a refresh rerun) is not the
	// turn of content the kubelet delivers later on its own.
	turn, write := newTurn(t, "a", 200*time.Millisecond, 20*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go turn.Run(ctx)
	write("b")
	time.Sleep(100 * time.Millisecond) // seen, and older than Fresh
	if why := wait(t, turn); !strings.Contains(why, "no turn given") {
		t.Fatalf("Wait returned %q; want a hold: the poke is older than Fresh", why)
	}
}

func TestTurnIsUsedOnce(t *testing.T) {
	turn, write := newTurn(t, "a", 150*time.Millisecond, time.Minute)
	write("b")
	if why := wait(t, turn); !strings.Contains(why, "turn (") {
		t.Fatalf("first Wait returned %q; want the pod's turn", why)
	}
	if why := wait(t, turn); !strings.Contains(why, "no turn given") {
		t.Fatalf("second Wait returned %q; want a hold: that turn was used", why)
	}
}

func TestTurnWaitEndsWithItsContext(t *testing.T) {
	turn, _ := newTurn(t, "a", time.Hour, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, ok := turn.Wait(ctx, slog.New(slog.DiscardHandler)); ok {
		t.Fatal("Wait reported a turn after its context ended")
	}
}

func TestRunnerRestartWaitsForTheTurnOtherReloadsDoNot(t *testing.T) {
	for _, kind := range []string{"restart", "restart-all", "signal"} {
		t.Run(kind, func(t *testing.T) {
			turn, write := newTurn(t, "a", time.Minute, time.Minute)
			rec := &recorder{kind: kind}
			r := startRunner(t, RunnerOptions{Actions: []Action{rec}, Turn: turn})
			r.Notify()
			if kind == "signal" {
				waitFor(t, "the signal, without a turn", func() bool { return rec.count() == 1 })
				return
			}
			time.Sleep(200 * time.Millisecond)
			if n := rec.count(); n != 0 {
				t.Fatalf("%s ran %d times before the pod's turn", kind, n)
			}
			write("b")
			waitFor(t, kind+" on the pod's turn", func() bool { return rec.count() == 1 })
		})
	}
}

func TestTurnHeldByTheJobOutlastsTheHold(t *testing.T) {
	// The Job holds the pods it has yet to restart: a pass stopped at a
	// pod that is not Ready again. Past Hold the agent keeps waiting while
	// the held file says so; once it is emptied, Hold ends the wait; a
	// turn ends it at any time.
	turn, write := newTurn(t, "2026-12-01T08:00:00Z", 50*time.Millisecond, time.Second)
	held := filepath.Join(t.TempDir(), "restart-held")
	if err := os.WriteFile(held, []byte("refresh of secret db stopped at pod web-1"), 0o644); err != nil {
		t.Fatal(err)
	}
	turn.HeldFile = held
	done := make(chan string, 1)
	go func() { done <- wait(t, turn) }()
	select {
	case why := <-done:
		t.Fatalf("Wait returned %q while held; want it to wait past the hold of 50ms", why)
	case <-time.After(300 * time.Millisecond):
	}
	if err := os.WriteFile(held, nil, 0o644); err != nil { // the annotation removed
		t.Fatal(err)
	}
	select {
	case why := <-done:
		if !strings.Contains(why, "no turn given within 50ms") {
			t.Fatalf("Wait returned %q once no longer held; want the hold to run out", why)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait still waiting 5s after the held file was emptied")
	}

	// Held, then poked: the turn goes ahead.
	if err := os.WriteFile(held, []byte("held"), 0o644); err != nil {
		t.Fatal(err)
	}
	go func() { done <- wait(t, turn) }()
	time.Sleep(200 * time.Millisecond)
	write("2026-12-01T09:00:00Z")
	select {
	case why := <-done:
		if !strings.Contains(why, "turn (") {
			t.Fatalf("Wait returned %q; want the pod's turn", why)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a held pod's turn did not end the wait")
	}
}
