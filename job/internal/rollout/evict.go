package rollout

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// evict removes a pod the Job replaces itself through the Eviction API, as
// kubectl drain does, so that PodDisruptionBudgets hold: a 429 (the
// eviction would violate a budget) is retried with backoff until ctx ends
// (--timeout), never forced. The UID precondition keeps a replacement of
// the same name safe.
func (r *Roller) evict(ctx context.Context, p *corev1.Pod) error {
	uid := p.UID
	ev := &policyv1.Eviction{
		ObjectMeta:    metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
		DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}},
	}
	backoff := wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 1 << 30, Cap: 10 * time.Second}
	var last error
	err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		err := r.Client.PolicyV1().Evictions(p.Namespace).Evict(ctx, ev)
		switch {
		case err == nil, apierrors.IsNotFound(err), apierrors.IsConflict(err):
			return true, nil
		case apierrors.IsTooManyRequests(err):
			if last == nil {
				r.Log.Info("eviction refused by a PodDisruptionBudget; retrying", "namespace", p.Namespace, "pod", p.Name, "error", err)
			}
			last = err
			return false, nil
		}
		return false, err
	})
	if err != nil {
		if last != nil && ctx.Err() != nil {
			return fmt.Errorf("evict pod %s/%s: a PodDisruptionBudget kept refusing until --timeout (%v): %w", p.Namespace, p.Name, last, context.Cause(ctx))
		}
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("evict pod %s/%s: %w; grant verb \"create\" on pods/eviction (the Role in manifests/base lists what the Job needs)", p.Namespace, p.Name, err)
		}
		return fmt.Errorf("evict pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// othersReady waits until every pod in pods other than next, not being
// deleted, is Ready: the Job never takes a pod down while another pod of
// the same workload is unready (it would stack two disruptions). It returns
// with ctx's cause when --timeout ends first.
func (r *Roller) othersReady(ctx context.Context, w workload.Workload, pods []corev1.Pod, next *corev1.Pod, progress func(string)) error {
	for i := range pods {
		p := &pods[i]
		if p.UID == next.UID || p.DeletionTimestamp != nil || PodReady(p) {
			continue
		}
		if progress != nil {
			progress(fmt.Sprintf("waiting for pod %s to be Ready before replacing pod %s", p.Name, next.Name))
		}
		uid := p.UID
		err := WaitPod(ctx, r.Client, p.Namespace, p.Name, func(q *corev1.Pod) (bool, error) {
			return q == nil || q.UID != uid || q.DeletionTimestamp != nil || PodReady(q), nil
		})
		if err != nil {
			return fmt.Errorf("%s: pod %s is not Ready, so pod %s was not replaced: %w", w, p.Name, next.Name, err)
		}
	}
	return nil
}

// rollOnDeleteDaemonSet updates a DaemonSet with the OnDelete strategy the
// way its controller would with RollingUpdate and maxUnavailable 1: one
// pod at a time, each replaced only when every other pod is Ready and the
// previous replacement is available.
func (r *Roller) rollOnDeleteDaemonSet(ctx context.Context, w workload.Workload, gen int64, progress func(string)) error {
	for {
		obj, err := r.Cache.Observed(ctx, w.Kind(), w.Name(), gen)
		if err != nil {
			return err
		}
		ds := obj.(*appsv1.DaemonSet)
		want := ds.Annotations[templateGenerationAnnotation]
		if want == "" {
			return fmt.Errorf("%s: no %s annotation: cannot tell its pods' template; roll its pods by deleting them (updateStrategy OnDelete)", w, templateGenerationAnnotation)
		}
		pods, err := r.controlled(ctx, workload.New(ds))
		if err != nil {
			return err
		}
		var next *corev1.Pod
		for i := range pods {
			if pods[i].DeletionTimestamp == nil && pods[i].Labels[podTemplateGenerationLabel] != want {
				next = &pods[i]
				break
			}
		}
		if next == nil {
			return nil
		}
		if err := r.othersReady(ctx, w, pods, next, progress); err != nil {
			return err
		}
		if progress != nil {
			progress(fmt.Sprintf("OnDelete: evicting pod %s (template generation %s) to update it to %s", next.Name, next.Labels[podTemplateGenerationLabel], want))
		}
		updated := ds.Status.UpdatedNumberScheduled
		if err := r.evict(ctx, next); err != nil {
			return err
		}
		// Its replacement, at the new generation, is available when the
		// controller counts one more updated pod and none unavailable.
		_, err = r.Cache.Observed(ctx, w.Kind(), w.Name(), gen)
		if err != nil {
			return err
		}
		if err := r.daemonReplaced(ctx, w, next, updated); err != nil {
			return err
		}
	}
}

// The DaemonSet controller labels each pod with the template generation it
// was made from (and records the current one on the DaemonSet).
const (
	templateGenerationAnnotation = "deprecated.daemonset.template.generation"
	podTemplateGenerationLabel   = "pod-template-generation"
)

func (r *Roller) daemonReplaced(ctx context.Context, w workload.Workload, old *corev1.Pod, updated int32) error {
	uid := old.UID
	if err := WaitPod(ctx, r.Client, old.Namespace, old.Name, func(p *corev1.Pod) (bool, error) {
		return p == nil || p.UID != uid, nil
	}); err != nil {
		return fmt.Errorf("%s: pod %s not gone after its eviction: %w", w, old.Name, err)
	}
	changed, stop := r.Cache.Subscribe(w.Kind(), w.Name())
	defer stop()
	for {
		if obj, err := r.Cache.Get(w.Kind(), w.Name()); err == nil {
			s := obj.(*appsv1.DaemonSet).Status
			if s.UpdatedNumberScheduled > updated && s.NumberUnavailable == 0 && s.NumberAvailable >= s.DesiredNumberScheduled {
				return nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%s: the replacement of pod %s is not available: %w", w, old.Name, context.Cause(ctx))
		}
	}
}
