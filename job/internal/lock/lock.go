// Package lock keeps two runs of the Job from working on the same Secret at
// once, with a coordination.k8s.io Lease in the Secret's namespace.
package lock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// ErrHeld: another live run holds the lock (exit 7).
var ErrHeld = errors.New("lock held by another run")

// Duration is how long a lease stays valid without renewal: a run killed
// with SIGKILL blocks reruns at most this long.
const Duration = 20 * time.Second

// Lock is a held Lease.
type Lock struct {
	client    kubernetes.Interface
	namespace string
	name      string
	holder    string
	cancel    context.CancelFunc
	done      chan struct{}
	log       *slog.Logger
	// lease is the Lease as last written: renewing updates it directly,
	// one request per renewal.
	lease *coordinationv1.Lease
}

// Acquire takes the Lease name in namespace for holder, or returns ErrHeld
// at once if another holder renewed it within Duration. A Lease left by a
// killed run is taken over once it has expired. The lock is renewed in the
// background until Release.
func Acquire(ctx context.Context, client kubernetes.Interface, namespace, name, holder string, log *slog.Logger) (*Lock, error) {
	leases := client.CoordinationV1().Leases(namespace)
	now := metav1.NewMicroTime(time.Now())
	spec := coordinationv1.LeaseSpec{
		HolderIdentity:       ptr.To(holder),
		LeaseDurationSeconds: ptr.To(int32(Duration / time.Second)),
		AcquireTime:          &now,
		RenewTime:            &now,
	}
	lease, err := leases.Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec:       spec,
	}, metav1.CreateOptions{FieldManager: "k8secrets"})
	if apierrors.IsAlreadyExists(err) {
		cur, gerr := leases.Get(ctx, name, metav1.GetOptions{})
		if gerr != nil {
			return nil, fmt.Errorf("read lease %s/%s: %w", namespace, name, gerr)
		}
		if !expired(cur, time.Now()) {
			return nil, fmt.Errorf("%w: lease %s/%s is held by %s (renewed %s ago); wait for that run to finish, or delete the lease if it is stale",
				ErrHeld, namespace, name, ptr.Deref(cur.Spec.HolderIdentity, "?"), time.Since(cur.Spec.RenewTime.Time).Round(time.Second))
		}
		cur.Spec = spec
		lease, err = leases.Update(ctx, cur, metav1.UpdateOptions{FieldManager: "k8secrets"})
		if apierrors.IsConflict(err) {
			return nil, fmt.Errorf("%w: lease %s/%s was taken over by another run just now", ErrHeld, namespace, name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("take lease %s/%s: %w", namespace, name, err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &Lock{client: client, namespace: namespace, name: name, holder: holder, cancel: cancel, done: make(chan struct{}), log: log, lease: lease}
	go l.renew(rctx)
	return l, nil
}

func expired(l *coordinationv1.Lease, now time.Time) bool {
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return true
	}
	return now.After(l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second))
}

func (l *Lock) renew(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(Duration / 4)
	defer t.Stop()
	leases := l.client.CoordinationV1().Leases(l.namespace)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := l.lease.DeepCopy()
		next.Spec.RenewTime = ptr.To(metav1.NewMicroTime(time.Now()))
		updated, err := leases.Update(ctx, next, metav1.UpdateOptions{FieldManager: "k8secrets"})
		if apierrors.IsConflict(err) {
			// Someone else wrote it: still ours? Then renew on top.
			cur, gerr := leases.Get(ctx, l.name, metav1.GetOptions{})
			if gerr == nil && ptr.Deref(cur.Spec.HolderIdentity, "") != l.holder {
				l.log.Error("lease taken over by another run", "namespace", l.namespace, "name", l.name, "holder", ptr.Deref(cur.Spec.HolderIdentity, ""))
				return
			}
			if gerr == nil {
				cur.Spec.RenewTime = next.Spec.RenewTime
				updated, err = leases.Update(ctx, cur, metav1.UpdateOptions{FieldManager: "k8secrets"})
			}
		}
		if err == nil {
			l.lease = updated
		}
		if err != nil && ctx.Err() == nil {
			l.log.Warn("renew lease", "namespace", l.namespace, "name", l.name, "error", err)
		}
	}
}

// Release stops renewing and deletes the Lease if this run still holds it.
func (l *Lock) Release(ctx context.Context) error {
	l.cancel()
	<-l.done
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
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("release lease %s/%s: %w", l.namespace, l.name, err)
	}
	return nil
}
