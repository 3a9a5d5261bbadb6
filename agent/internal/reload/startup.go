package reload

import (
	"context"
	"errors"
	"time"
)

// behind is implemented by the actions that reach the app's processes.
type behind interface {
	Behind() ([]Process, time.Time, error)
}

// Behind implements behind.
func (s *Signal) Behind() ([]Process, time.Time, error) { return s.Target.Behind() }

// Behind implements behind.
func (r *Restart) Behind() ([]Process, time.Time, error) { return r.Target.Behind() }

// NotifyStart asks for the start-up check, once the watcher has read every
// directory. It never blocks.
func (r *Runner) NotifyStart() {
	select {
	case r.start <- struct{}{}:
	default:
	}
}

// startup reloads if a target process started before the content it is
// given appeared: the update arrived while the agent was not running
// (OOM-killed, restarted by its probe, crash-looping) and would otherwise
// wait for the next one. A process started after the content has read it;
// an app not running yet will read it at start. Actions that reach no
// process (http:, exec:) cannot tell what the app has: they wait for the
// next change, as before.
// It reports whether it reloaded.
func (r *Runner) startup(ctx context.Context) bool {
	var stale []Process
	var changed time.Time
	for _, a := range r.opts.Actions {
		b, ok := a.(behind)
		if !ok {
			continue
		}
		procs, at, err := b.Behind()
		if err != nil {
			if !errors.Is(err, ErrNoProcess) {
				r.log.Warn("start-up check: cannot tell whether the app has the current content", "action", a.Kind(), "err", err)
			}
			continue
		}
		stale, changed = append(stale, procs...), at
	}
	if len(stale) == 0 {
		return false
	}
	if r.opts.OnStale != nil {
		r.opts.OnStale()
	}
	pids := make([]int, 0, len(stale))
	for _, p := range stale {
		pids = append(pids, p.PID)
	}
	if r.opts.StartGate != nil {
		// Nothing changed since the watcher's first reading, so the
		// runner's Gate has nothing to judge: judge the content itself.
		if err := r.opts.StartGate(); err != nil {
			r.log.Warn("the content is newer than the app's process, but refused; reloading once it is valid", "err", err)
			return false
		}
	}
	r.log.Info("the content is newer than the app's process: it changed while the agent was not running; reloading",
		"content_changed", changed.UTC().Format(time.RFC3339Nano), "pids", pids, "started", stale[0].Started.UTC().Format(time.RFC3339Nano))
	r.reload(ctx)
	return true
}
