package watch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/rollout"
)

// interimVerify stands in, in this package's tests, for verify.Wait, which
// asks each pod's agent: no kubelet runs the pods of a bare API server. It
// waits until every running pod of the rotated workload (selector) that
// mounts secret carries a refresh annotation written at or after this rotation's
// refresh started, and is Ready. The e2e tests on kind (e2e/reload
// watch_test.go) run the real verification.
func init() {
	standIn = func(c *Controller) VerifyFunc { return c.interimVerify }
}

func (c *Controller) interimVerify(ctx context.Context, ns, secret, selector string, _ func(context.Context) (*corev1.Secret, error)) (Verdict, error) {
	c.mu.Lock()
	since := c.poked[secretKey(ns, secret)]
	c.mu.Unlock()
	verified, total, stale, err := c.waitPods(ctx, ns, selector, secret, since)
	return Verdict{Verified: verified, Total: total, Stale: stale}, err
}

// waitPods waits, until ctx ends, for every running pod matching sel that
// mounts secret to be poked since since and Ready; it returns the count and
// the names of those that are not.
func (c *Controller) waitPods(ctx context.Context, ns, sel, secret string, since time.Time) (verified, total int, stale []string, err error) {
	pods := c.client.CoreV1().Pods(ns)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = sel
			return pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = sel
			return pods.Watch(ctx, o)
		},
	}
	count := func(store cache.Store) {
		verified, total, stale = 0, 0, nil
		for _, obj := range store.List() {
			p := obj.(*corev1.Pod)
			if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || !mountsSecret(p, secret) {
				continue
			}
			total++
			at, perr := time.Parse(time.RFC3339Nano, p.Annotations[wellknown.RefreshAnnotation])
			if perr == nil && !at.Before(since.Truncate(time.Microsecond)) && rollout.PodReady(p) {
				verified++
			} else {
				stale = append(stale, p.Name)
			}
		}
		slices.Sort(stale)
	}
	var store cache.Store
	_, err = watchtools.UntilWithSync(ctx, lw, &corev1.Pod{}, func(s cache.Store) (bool, error) {
		store = s
		count(s)
		return len(stale) == 0, nil
	}, func(watch.Event) (bool, error) {
		count(store)
		return len(stale) == 0, nil
	})
	if err != nil && ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return verified, total, stale, nil // timed out: the stale pods say which
	}
	if err != nil {
		return verified, total, stale, fmt.Errorf("watch pods %s in %s: %w", sel, ns, err)
	}
	return verified, total, stale, nil
}

func mountsSecret(p *corev1.Pod, secret string) bool {
	for _, v := range p.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			return true
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.Secret != nil && s.Secret.Name == secret {
					return true
				}
			}
		}
	}
	return false
}
