package reload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Turn holds a restart until it is this pod's turn. Restarting is the one
// reload that takes the app down, and the Job's refresh and watch restart a
// workload's pods one at a time, each Ready before the next, by changing
// the pod's k8secrets.io/refreshed-at annotation. But the kubelet also
// delivers new Secret content on its own periodic sync, to any pod at any
// moment: an agent that restarted on arrival took down pods nobody had
// given a turn, beside the one being restarted (measured: two of five
// pods not Ready at once).
//
// File is a downward API file of that annotation, which the kubelet
// rewrites in the same sync as the Secret's files. A restart goes ahead
// when the file has changed within Fresh of the content, before or after
// it (the pod was poked for this content); otherwise it waits for the
// file to change, at most Hold (nobody runs the watch or refresh: restart
// anyway, as without a turn). A change of the file is used once: a later
// content change does not ride on an old poke.
//
// HeldFile, when set, is a downward API file of the pod's
// k8secrets.io/restart-held annotation, which the Job sets on the pods it
// has yet to restart in a pass (and on a workload's pods while a rotation
// waits for its pods to be available). While it is not empty, Hold does not
// end the wait: a pass that stopped because a restarted pod is not Ready
// again (an app that fails with the new content) must not be followed by
// the other pods restarting on their own after Hold, all taking the same
// content down with them.
type Turn struct {
	// File is the downward API file of the pod's refreshed-at annotation.
	File string
	// HeldFile is the downward API file of its restart-held annotation.
	HeldFile string
	// Hold bounds the wait for a turn, unless HeldFile says the Job holds
	// the pod.
	Hold time.Duration
	// Fresh is how long before the content a change of File still counts
	// as this content's turn (the kubelet writes both in one sync).
	Fresh time.Duration
	// Every is the period of the background reading of File (Run), and
	// Poll that of the reading while a restart waits.
	Every, Poll time.Duration

	mu     sync.Mutex
	last   []byte    // File's content when last read
	seenAt time.Time // when last changed, as seen here; zero: not since the start
	used   bool      // last has given a turn already
}

// Default periods of a Turn.
const (
	TurnFresh = 10 * time.Second
	TurnEvery = time.Second
	TurnPoll  = 100 * time.Millisecond
)

// Start reads File once: what it holds at the agent's start (an annotation
// set before) is no one's turn.
func (t *Turn) Start() error {
	b, err := t.read()
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.last, t.used = b, true
	t.mu.Unlock()
	return nil
}

// Run reads File every Every until ctx is done, so that a change seen
// before the content it was for is dated.
func (t *Turn) Run(ctx context.Context) {
	tick := time.NewTicker(t.Every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.observe(time.Now())
		}
	}
}

// Wait returns when the pod's turn to restart has come, or Hold has
// passed, with why; ok is false if ctx ended first.
func (t *Turn) Wait(ctx context.Context, log *slog.Logger) (why string, ok bool) {
	start := time.Now()
	logged, heldLogged := false, ""
	for {
		now := time.Now()
		t.observe(now)
		t.mu.Lock()
		if !t.used && !t.seenAt.IsZero() && now.Sub(t.seenAt) <= t.Fresh {
			t.used = true
			t.mu.Unlock()
			return "the pod's turn (k8secrets.io/refreshed-at changed)", true
		}
		t.mu.Unlock()
		held := now.Sub(start)
		if held >= t.Hold {
			by := t.heldBy()
			if by == "" {
				return fmt.Sprintf("no turn given within %s (neither the watch nor refresh changed k8secrets.io/refreshed-at)", t.Hold), true
			}
			if by != heldLogged {
				log.Warn("still holding the restart past --turn-hold: the Job holds this pod (k8secrets.io/restart-held) until its turn", "heldBy", by)
				heldLogged = by
			}
		}
		if !logged {
			log.Info("holding the restart until this pod's turn: the watch or refresh changes its k8secrets.io/refreshed-at", "hold", t.Hold)
			logged = true
		}
		wait := t.Poll
		if held < t.Hold {
			wait = min(wait, t.Hold-held)
		}
		if !sleep(ctx, wait) {
			return "", false
		}
	}
}

// observe reads File and dates a change. A file that cannot be read keeps
// what was last read: the turn waits, bounded by Hold.
func (t *Turn) observe(now time.Time) {
	b, err := t.read()
	if err != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !bytes.Equal(b, t.last) {
		t.last, t.seenAt, t.used = b, now, false
	}
}

// heldBy is HeldFile's content: why the Job holds the pod, or "" if it
// does not (no HeldFile, the annotation unset, or the file unreadable).
func (t *Turn) heldBy() string {
	if t.HeldFile == "" {
		return ""
	}
	b, err := os.ReadFile(t.HeldFile)
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(b))
}

// read returns File's content; a missing file (the annotation was never
// set: the kubelet writes an empty file, but a test may not) is empty.
func (t *Turn) read() ([]byte, error) {
	b, err := os.ReadFile(t.File)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the turn file %s: %w", t.File, err)
	}
	return b, nil
}
