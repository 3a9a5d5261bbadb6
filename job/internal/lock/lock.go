// Package lock keeps two runs of the Job from working on the same Secret,
// or on the same workload, at once, with coordination.k8s.io Leases taken
// and kept by client-go's leaderelection: expiry is measured on the local
// clock from when this process last saw the lease record change, never by
// comparing another machine's RenewTime with ours; renewals that fail for
// RenewDeadline (shorter than the lease) lose the lease, and the work stops.
//
// Why client-go's LeaderElector rather than our own loop: it is the
// reference implementation of exactly these rules (observed time, renew
// deadline, optimistic renewal with one UPDATE), maintained and used by
// every controller manager. A one-shot Job needs two things it does not
// offer, added around it here: give up at once when another run is seen
// alive (its record changes while we watch), rather than queue forever; and
// delete the Lease on release, rather than leave one behind per run.
package lock

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/utils/ptr"
)

// ErrHeld: another live run holds the lock (exit 7).
var ErrHeld = errors.New("lock held by another run")

// ErrLost: this run's renewals failed for RenewDeadline, or another run took
// the lease over; the work was stopped (exit 1: rerun to converge).
var ErrLost = errors.New("lost the lock")

// The leaderelection timings.
const (
	// Duration is how long a lease stays valid, as its observer counts it,
	// without a change of its record: a run killed with SIGKILL blocks
	// reruns at most this long after they first look at it.
	Duration = 20 * time.Second
	// RenewDeadline: the holder gives the lease up (and stops its work) if
	// it could not renew for this long, well before others may take it.
	RenewDeadline = 15 * time.Second
	// RetryPeriod: the holder renews, and a waiting run looks again, this
	// often. A run meeting a live holder gives up within about two of them.
	RetryPeriod = 3 * time.Second
)

// Lock is a held Lease.
type Lock struct {
	client    kubernetes.Interface
	namespace string
	name      string
	holder    string
	log       *slog.Logger

	cancel context.CancelFunc // stops the elector
	done   chan struct{}      // closed when the elector has returned
	lost   chan struct{}      // closed when the lease was lost
	mu     sync.Mutex
	freed  bool // Release was called: stopping is not losing
}

// Acquire takes the Lease name in namespace for holder. If another holder
// has it and is seen renewing it (its record changes while this run
// watches), Acquire returns ErrHeld at once; a lease whose record stays
// unchanged for its duration on this machine's clock (a killed run's) is
// taken over. The lease is renewed in the background until Release.
func Acquire(ctx context.Context, client kubernetes.Interface, namespace, name, holder string, log *slog.Logger) (*Lock, error) {
	return acquire(ctx, client, namespace, name, holder, 0, log)
}

// Wait takes the Lease like Acquire, but waits up to wait for a live holder
// to let it go (or die) before it returns ErrHeld.
func Wait(ctx context.Context, client kubernetes.Interface, namespace, name, holder string, wait time.Duration, log *slog.Logger) (*Lock, error) {
	return acquire(ctx, client, namespace, name, holder, wait, log)
}

func acquire(ctx context.Context, client kubernetes.Interface, namespace, name, holder string, wait time.Duration, log *slog.Logger) (*Lock, error) {
	l := &Lock{client: client, namespace: namespace, name: name, holder: holder, log: log,
		done: make(chan struct{}), lost: make(chan struct{})}
	w := &watcher{
		Interface: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name},
			Client:     client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: holder},
		},
		alive:  make(chan string, 1),
		denied: make(chan error, 1),
	}
	started := make(chan struct{})
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:          w,
		Name:          name,
		LeaseDuration: Duration,
		RenewDeadline: RenewDeadline,
		RetryPeriod:   RetryPeriod,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) { close(started) },
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("lease %s/%s: %w", namespace, name, err)
	}
	// The elector outlives ctx's cancellation only until Release, which the
	// caller always calls (also after SIGTERM: a rollback may still run).
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel = cancel
	go func() {
		defer close(l.done)
		le.Run(rctx)
		l.mu.Lock()
		freed := l.freed
		l.mu.Unlock()
		select {
		case <-started:
			if !freed {
				log.Error("lost the lease: renewals failed or another run took it over; stopping", "namespace", namespace, "name", name)
				close(l.lost)
			}
		default:
		}
	}()

	// A live holder is seen within about two retries and a dead one's
	// lease taken over after Duration: past that, something else is wrong
	// (the API server failing every request), and the last error says what.
	bound := wait
	if wait == 0 {
		bound = Duration + 3*RetryPeriod
	}
	t := time.NewTimer(bound)
	defer t.Stop()
	timeout := t.C
	var alive <-chan string
	if wait == 0 {
		alive = w.alive
	}
	giveUp := func(err error) (*Lock, error) {
		cancel()
		<-l.done
		// Taken in the meantime (the elector raced our giving up)? Then
		// let it go again.
		select {
		case <-started:
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = l.remove(rctx)
		default:
		}
		return nil, err
	}
	select {
	case <-started:
		return l, nil
	case other := <-alive:
		return giveUp(fmt.Errorf("%w: lease %s/%s is held by %s, who renewed it just now; wait for that run to finish (or, if no such run exists, delete the lease)",
			ErrHeld, namespace, name, other))
	case err := <-w.denied:
		return giveUp(fmt.Errorf("take lease %s/%s: %w", namespace, name, err))
	case <-timeout:
		if err := w.lastErr(); err != nil {
			return giveUp(fmt.Errorf("take lease %s/%s: not taken within %s: %w", namespace, name, bound, err))
		}
		return giveUp(fmt.Errorf("%w: lease %s/%s is still held by %s after %s; rerun once that run has finished",
			ErrHeld, namespace, name, orUnknown(le.GetLeader()), bound))
	case <-ctx.Done():
		return giveUp(fmt.Errorf("take lease %s/%s: %w", namespace, name, context.Cause(ctx)))
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "another run"
	}
	return s
}

// watcher passes the elector's reads through and tells, on alive, when
// another holder's record changed between two reads: that holder is alive.
// Only a change counts, never the record's timestamps against our clock.
// It also keeps the last error, and reports a refusal by RBAC on denied at
// once: the elector itself would only log it and retry forever.
type watcher struct {
	resourcelock.Interface
	alive  chan string
	denied chan error
	first  []byte
	who    string
	mu     sync.Mutex
	last   error
}

func (w *watcher) seen(err error) error {
	if err == nil || apierrors.IsNotFound(err) {
		return err
	}
	w.mu.Lock()
	w.last = err
	w.mu.Unlock()
	if apierrors.IsForbidden(err) {
		select {
		case w.denied <- err:
		default:
		}
	}
	return err
}

func (w *watcher) lastErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

func (w *watcher) Create(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	return w.seen(w.Interface.Create(ctx, r))
}

func (w *watcher) Update(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	return w.seen(w.Interface.Update(ctx, r))
}

func (w *watcher) Get(ctx context.Context) (*resourcelock.LeaderElectionRecord, []byte, error) {
	rec, raw, err := w.Interface.Get(ctx)
	if err != nil {
		return rec, raw, w.seen(err)
	}
	if rec.HolderIdentity == "" || rec.HolderIdentity == w.Identity() {
		return rec, raw, err
	}
	switch {
	case w.first == nil:
		w.first, w.who = raw, rec.HolderIdentity
	case string(raw) != string(w.first):
		select {
		case w.alive <- rec.HolderIdentity:
		default:
		}
	}
	return rec, raw, err
}

// Lost is closed when the lease is lost while held.
func (l *Lock) Lost() <-chan struct{} { return l.lost }

// Guard returns a context that ends, with a cause wrapping ErrLost, when
// the lease is lost; the work under it stops (nothing is rolled back
// blindly: a rerun converges).
func (l *Lock) Guard(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-l.lost:
			cancel(fmt.Errorf("%w: lease %s/%s (renewals failed for %s, or another run took it over); stopped where it was, nothing rolled back; rerun to converge", ErrLost, l.namespace, l.name, RenewDeadline))
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// Release stops renewing and deletes the Lease if this run still holds it.
func (l *Lock) Release(ctx context.Context) error {
	l.mu.Lock()
	l.freed = true
	l.mu.Unlock()
	l.cancel()
	select {
	case <-l.done:
	case <-ctx.Done():
		return fmt.Errorf("release lease %s/%s: %w", l.namespace, l.name, ctx.Err())
	}
	return l.remove(ctx)
}

func (l *Lock) remove(ctx context.Context) error {
	leases := l.client.CoordinationV1().Leases(l.namespace)
	cur, err := leases.Get(ctx, l.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("release lease %s/%s: %w", l.namespace, l.name, err)
	}
	if ptr.Deref(cur.Spec.HolderIdentity, "") != l.holder {
		return nil
	}
	err = leases.Delete(ctx, l.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &cur.UID, ResourceVersion: &cur.ResourceVersion}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("release lease %s/%s: %w", l.namespace, l.name, err)
	}
	return nil
}

// WorkloadName is the Lease that keeps runs for different Secrets from
// rolling out one workload at once. Secret leases are "k8secrets-<id>",
// where id has no dots: the dots here keep the two apart.
func WorkloadName(kind, name string) string {
	n := "k8secrets." + strings.ToLower(kind) + "." + name
	if len(n) > 253 {
		sum := sha256.Sum256([]byte(n))
		n = strings.TrimRight(n[:253-17], ".-") + "." + hex.EncodeToString(sum[:])[:16]
	}
	return n
}
