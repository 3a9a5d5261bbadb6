package rollout

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// rollOnDelete updates a StatefulSet with the OnDelete strategy the way its
// controller would with RollingUpdate: one pod at a time, highest ordinal
// first, each deleted only when the previous one is Ready at the new revision.
func (r *Roller) rollOnDelete(ctx context.Context, w workload.Workload, gen int64, progress func(string)) error {
	for {
		// The update revision is known once the controller observed gen.
		obj, err := r.Cache.Observed(ctx, w.Kind(), w.Name(), gen)
		if err != nil {
			return err
		}
		sts := obj.(*appsv1.StatefulSet)
		rev := sts.Status.UpdateRevision
		pods, err := r.ownedPods(ctx, sts)
		if err != nil {
			return err
		}
		var next *corev1.Pod
		for i := range pods {
			if pods[i].Labels[appsv1.ControllerRevisionHashLabelKey] != rev {
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
			progress(fmt.Sprintf("OnDelete: deleting pod %s (revision %s) to update it to %s", next.Name, next.Labels[appsv1.ControllerRevisionHashLabelKey], rev))
		}
		if err := r.deletePod(ctx, next); err != nil {
			return err
		}
		if err := r.waitPodReady(ctx, next.Namespace, next.Name, next.UID, rev); err != nil {
			return err
		}
	}
}

// deleteRevision deletes the StatefulSet's pods of revision rev, so that the
// controller recreates them from its current revision.
func (r *Roller) deleteRevision(ctx context.Context, sts *appsv1.StatefulSet, rev string) error {
	pods, err := r.ownedPods(ctx, sts)
	if err != nil {
		return err
	}
	for i := range pods {
		if pods[i].Labels[appsv1.ControllerRevisionHashLabelKey] == rev {
			r.Log.Info("deleting pod of the failed revision", "namespace", sts.Namespace, "name", pods[i].Name, "revision", rev)
			if err := r.deletePod(ctx, &pods[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// deletePod replaces a pod through the Eviction API, so that
// PodDisruptionBudgets hold.
func (r *Roller) deletePod(ctx context.Context, p *corev1.Pod) error {
	return r.evict(ctx, p)
}

// ownedPods lists the StatefulSet's pods, highest ordinal first.
func (r *Roller) ownedPods(ctx context.Context, sts *appsv1.StatefulSet) ([]corev1.Pod, error) {
	pods, err := r.controlled(ctx, workload.New(sts))
	if err != nil {
		return nil, err
	}
	sort.Slice(pods, func(i, j int) bool { return ordinal(pods[i].Name) > ordinal(pods[j].Name) })
	return pods, nil
}

// controlled lists the pods whose controller is w, a StatefulSet or a
// DaemonSet (a Deployment controls ReplicaSets, not pods).
func (r *Roller) controlled(ctx context.Context, w workload.Workload) ([]corev1.Pod, error) {
	var sel *metav1.LabelSelector
	switch o := w.Object.(type) {
	case *appsv1.StatefulSet:
		sel = o.Spec.Selector
	case *appsv1.DaemonSet:
		sel = o.Spec.Selector
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return nil, fmt.Errorf("selector of %s: %w", w, err)
	}
	list, err := r.Client.CoreV1().Pods(w.Namespace()).List(ctx, metav1.ListOptions{LabelSelector: s.String()})
	if err != nil {
		return nil, fmt.Errorf("list pods of %s: %w", w, err)
	}
	uid := w.Meta().GetUID()
	var pods []corev1.Pod
	for _, p := range list.Items {
		if ref := metav1.GetControllerOf(&p); ref != nil && ref.UID == uid {
			pods = append(pods, p)
		}
	}
	return pods, nil
}

func ordinal(name string) int {
	n, err := strconv.Atoi(name[strings.LastIndexByte(name, '-')+1:])
	if err != nil {
		return -1
	}
	return n
}

// waitPodReady waits for the pod named name, other than the deleted old one,
// to be Ready at revision rev.
func (r *Roller) waitPodReady(ctx context.Context, ns, name string, old types.UID, rev string) error {
	err := WaitPod(ctx, r.Client, ns, name, func(p *corev1.Pod) (bool, error) {
		if p == nil || p.UID == old || p.DeletionTimestamp != nil {
			return false, nil
		}
		return p.Labels[appsv1.ControllerRevisionHashLabelKey] == rev && PodReady(p), nil
	})
	if err != nil {
		return fmt.Errorf("pod %s/%s not Ready at revision %s: %w", ns, name, rev, err)
	}
	return nil
}

// WaitPod watches the pod ns/name until cond is true or fails, or ctx ends
// (the error is then ctx's cause). cond sees nil while the pod does not exist.
func WaitPod(ctx context.Context, c kubernetes.Interface, ns, name string, cond func(*corev1.Pod) (bool, error)) error {
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	pods := c.CoreV1().Pods(ns)
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return pods.List(ctx, o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return pods.Watch(ctx, o)
		},
	}
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Pod{}, nil, func(ev watch.Event) (bool, error) {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok || ev.Type == watch.Deleted {
			p = nil
		}
		return cond(p)
	})
	if err != nil && ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// PodReady tells whether the pod's Ready condition is true.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
