package reload

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/k8secrets/k8secrets/agent/internal/metrics"
)

// RunnerOptions configure a Runner.
type RunnerOptions struct {
	// Actions run in order on every reload.
	Actions []Action
	// MinInterval is the least time between the starts of two reloads.
	MinInterval time.Duration
	// BackoffInitial and BackoffMax bound the retry delay after a failure,
	// which doubles from the first to the second.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// Gate, when set, may refuse a reload (invalid content): the reload is
	// dropped, and the change that fixes the content will trigger one.
	Gate func() error
	// StartGate, when set, may refuse the start-up reload (see startup):
	// it judges the current content, where Gate judges what changed.
	StartGate func() error
	// Turn, when set, holds each restart (restart and restart-all) until
	// the pod's turn: see Turn. Other reloads never wait.
	Turn    *Turn
	Logger  *slog.Logger
	Metrics *metrics.Agent

	// OnSuccess, when set, is called after a reload whose actions all
	// succeeded (the watcher then publishes what the app has loaded).
	OnSuccess func()
	// OnFailure, when set, is called after each failed attempt, before
	// the retry (the watcher reports the content failed in /status).
	OnFailure func(err error)
	// OnStale, when set, is called when the start-up check finds the app
	// older than the content: what the agent read at its start is not
	// what the app has loaded (the watcher stops saying so in /status).
	OnStale func()
}

// Runner runs the actions when notified. The first change reloads at once
// (leading edge); changes that arrive while a reload runs, or within
// MinInterval of the last one, fold into exactly one more reload when the
// interval ends (trailing edge). So a burst of any length ends with a reload
// that saw its final content, and no change is lost.
type Runner struct {
	opts    RunnerOptions
	log     *slog.Logger
	notify  chan struct{}
	start   chan struct{}
	running atomic.Bool
}

// NewRunner returns a Runner; start it with Run.
func NewRunner(opts RunnerOptions) *Runner {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.BackoffInitial <= 0 {
		opts.BackoffInitial = time.Second
	}
	if opts.BackoffMax < opts.BackoffInitial {
		opts.BackoffMax = opts.BackoffInitial
	}
	return &Runner{opts: opts, log: opts.Logger, notify: make(chan struct{}, 1), start: make(chan struct{}, 1)}
}

// Notify records a change. It never blocks: pending changes fold into one.
func (r *Runner) Notify() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// Alive reports whether Run is running.
func (r *Runner) Alive() bool { return r.running.Load() }

// Run reloads on notifications until ctx is done.
func (r *Runner) Run(ctx context.Context) {
	r.running.Store(true)
	defer r.running.Store(false)
	var last time.Time // start of the last reload
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.start:
			if r.startup(ctx) {
				last = time.Now()
			}
			continue
		case <-r.notify:
		}
		if wait := r.opts.MinInterval - time.Since(last); !last.IsZero() && wait > 0 {
			if !sleep(ctx, wait) {
				return
			}
		}
		if r.opts.Turn != nil && r.restarts() {
			why, ok := r.opts.Turn.Wait(ctx, r.log)
			if !ok {
				return
			}
			r.log.Info("restarting", "why", why)
		}
		// Changes seen from here on are read by this reload or cause
		// another: drain what the wait folded.
		select {
		case <-r.notify:
		default:
		}
		last = time.Now()
		r.reload(ctx)
	}
}

// reload runs the actions, retrying from the failed one with backoff until
// they all succeed. A change that arrives during the backoff restarts the
// sequence from the first action, since the earlier ones have not seen it.
func (r *Runner) reload(ctx context.Context) {
	if r.opts.Gate != nil {
		if err := r.opts.Gate(); err != nil {
			r.log.Warn("not reloading: the content is invalid", "err", err)
			return
		}
	}
	from := 0
	delay := r.opts.BackoffInitial
	failed := false
	for {
		var err error
		for i := from; i < len(r.opts.Actions); i++ {
			a := r.opts.Actions[i]
			start := time.Now()
			err = a.Reload(ctx)
			if errors.Is(err, ErrRefused) {
				r.log.Warn("not reloading: the content is invalid", "err", err)
				return
			}
			r.opts.Metrics.Reload(a.Kind(), err, time.Since(start))
			if err != nil {
				from = i
				break
			}
		}
		if err == nil {
			if r.restarts() {
				// The app's processes have ended; the kubelet starts them
				// again, and they will read the files as they are then.
				// Changes seen up to now are theirs: no second restart.
				select {
				case <-r.notify:
				default:
				}
			}
			r.opts.Metrics.ReloadSucceeded(time.Now())
			if r.opts.OnSuccess != nil {
				r.opts.OnSuccess()
			}
			if failed {
				r.log.Info("reloaded after retries")
			} else {
				r.log.Info("reloaded")
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		failed = true
		if r.opts.OnFailure != nil {
			r.opts.OnFailure(err)
		}
		r.log.Warn("reload failed; retrying", "action", r.opts.Actions[from].Kind(), "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return
		case <-r.notify:
			// New content: retry now from the start, after the gate.
			from = 0
			if !sleep(ctx, min(delay, r.opts.MinInterval)) {
				return
			}
			if r.opts.Gate != nil {
				if err := r.opts.Gate(); err != nil {
					r.log.Warn("not reloading: the content is invalid", "err", err)
					return
				}
			}
		case <-time.After(delay):
		}
		delay = min(2*delay, r.opts.BackoffMax)
	}
}

// restarts tells whether a reload ends the app's processes (restart, or
// restart-all, which ends the whole pod's): those wait for the pod's turn,
// and the changes seen before one are the restarted app's.
func (r *Runner) restarts() bool {
	for _, a := range r.opts.Actions {
		if k := a.Kind(); k == "restart" || k == "restart-all" {
			return true
		}
	}
	return false
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
