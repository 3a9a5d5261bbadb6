// Package reload tells the app to load new Secret content: by a signal, an
// HTTP request, a command, or by ending its process so that the kubelet
// restarts the container in place. Runner decides when: at once on the
// first change, then at most once per interval, retrying failures with
// capped exponential backoff.
package reload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"syscall"
	"time"
)

// Action is one way of reloading the app.
type Action interface {
	// Kind is the metric label: "signal", "http", "restart" or "exec".
	Kind() string
	Reload(ctx context.Context) error
}

// Signal sends Sig to the target processes.
type Signal struct {
	Sig    syscall.Signal
	Target Target
}

// Kind implements Action.
func (s *Signal) Kind() string { return "signal" }

// Reload implements Action.
func (s *Signal) Reload(context.Context) error {
	procs, err := s.Target.Due()
	if err != nil {
		return fmt.Errorf("signal %s: %w", s.Target, err)
	}
	var errs []error
	for _, p := range procs {
		if err := kill(p, s.Sig); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func kill(p Process, sig syscall.Signal) error {
	err := syscall.Kill(p.PID, sig)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EPERM):
		return fmt.Errorf("signal %s (pid %d): %w; run the agent as the app's user (runAsUser) or give it CAP_KILL", p.Comm, p.PID, err)
	case errors.Is(err, syscall.ESRCH):
		// It exited between Find and now: its container's next process
		// reads the content at start. Done.
		return nil
	default:
		return fmt.Errorf("signal %s (pid %d): %w", p.Comm, p.PID, err)
	}
}

// Restart ends the target processes, SIGTERM then SIGKILL after Grace, so
// that the kubelet restarts their containers in place, for apps that cannot
// reload. It first waits a random time up to Jitter, so that replicas whose
// volumes were updated together do not all restart at once.
type Restart struct {
	Target Target
	Grace  time.Duration
	Jitter time.Duration
	// Gate, when set, is asked again after the jitter: content refused
	// meanwhile must not be what the restarted app reads.
	Gate func() error
	// Up, when positive, makes a restart succeed only once as many target
	// processes as were ended run again, each started after the end:
	// what the agent then reports loaded (/status) is an app that runs,
	// not one the kubelet holds in its crash-loop backoff. At most Up.
	Up time.Duration
}

// RestartUp bounds the wait for the restarted app: the kubelet's
// crash-loop backoff reaches 5 minutes.
const RestartUp = 6 * time.Minute

// ErrRefused means the content was refused while a reload waited: the
// reload is dropped, not retried; the change that fixes the content brings
// another.
var ErrRefused = errors.New("content refused")

// Kind implements Action.
func (r *Restart) Kind() string { return "restart" }

// Reload implements Action.
func (r *Restart) Reload(ctx context.Context) error {
	if r.Jitter > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(rand.N(r.Jitter)):
		}
	}
	if r.Gate != nil {
		if err := r.Gate(); err != nil {
			return fmt.Errorf("restart %s: %w: %w", r.Target, ErrRefused, err)
		}
	}
	procs, err := r.Target.Due()
	if err != nil {
		return fmt.Errorf("restart %s: %w", r.Target, err)
	}
	var errs []error
	var pending []Process
	ended := time.Now()
	for _, p := range procs {
		if err := kill(p, syscall.SIGTERM); err != nil {
			errs = append(errs, err)
			continue
		}
		pending = append(pending, p)
	}
	proc := r.Target.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	deadline := time.Now().Add(r.Grace)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(pending) > 0 && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		pending = slices.DeleteFunc(pending, func(p Process) bool { return !alive(proc, p) })
	}
	for _, p := range pending {
		if err := kill(p, syscall.SIGKILL); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 || r.Up <= 0 || len(procs) == 0 {
		return errors.Join(errs...)
	}
	return r.waitUp(ctx, len(procs), ended)
}

// waitUp waits, at most r.Up, until n target processes started after
// ended run.
func (r *Restart) waitUp(ctx context.Context, n int, ended time.Time) error {
	deadline := time.Now().Add(r.Up)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	up := 0
	for {
		procs, err := r.Target.Find()
		if err != nil && !errors.Is(err, ErrNoProcess) {
			return fmt.Errorf("restart %s: %w", r.Target, err)
		}
		up = 0
		for _, p := range procs {
			if p.startedAfter(ended) {
				up++
			}
		}
		if up >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("restart %s: %d of %d ended processes running again after %s (the kubelet's crash-loop backoff, or an app that fails to start)", r.Target, up, n, r.Up)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Exec runs a command in the agent's container (no shell: the image has
// none).
type Exec struct {
	Args    []string
	Timeout time.Duration
}

// Kind implements Action.
func (e *Exec) Kind() string { return "exec" }

// Reload implements Action. The command's output is not logged: it could
// echo the Secret.
func (e *Exec) Reload(ctx context.Context) error {
	if e.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, e.Args[0], e.Args[1:]...)
	cmd.WaitDelay = time.Second
	cmd.Env = execEnv
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("exec %s: %w", e.Args[0], err)
	}
	return nil
}
