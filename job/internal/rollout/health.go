package rollout

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// note records the object a write of ours returned: the waits that follow
// judge the workload's conditions against it (only conditions newer than
// the write count). hashKey, when set, is the injection-hash annotation the
// write put on the template, which the judged template must still carry.
func (r *Roller) note(obj runtime.Object, hashKey ...string) {
	if obj == nil {
		return
	}
	w := workload.New(obj)
	r.written.Store(string(w.Kind())+"/"+w.Name(), written{obj: obj, keys: hashKey})
}

type written struct {
	obj  runtime.Object
	keys []string
}

// writtenObj is what our last write of w returned, if any.
func (r *Roller) writtenObj(w workload.Workload) written {
	if v, ok := r.written.Load(string(w.Kind()) + "/" + w.Name()); ok {
		return v.(written)
	}
	return written{}
}

// carries checks that obj's pod template still carries the injection hash
// that our write put there: a template without it (an operator or a CD
// system reverted it) is not our rollout, whatever its status says. Other
// injections' hashes may change meanwhile: they are not ours to judge.
func carries(obj runtime.Object, wr written) error {
	have := workload.Template(obj).Annotations
	for _, k := range wr.keys {
		v := workload.Template(wr.obj).Annotations[k]
		if have[k] != v {
			w := workload.New(obj)
			return fmt.Errorf("%w: %s: its pod template no longer carries %s=%s (now %q): another writer changed it during the rollout; see its managedFields (kubectl get %s %s -n %s --show-managed-fields)",
				ErrFailed, w, k, v, have[k], lower(w.Kind()), w.Name(), w.Namespace())
		}
	}
	return nil
}

// steady holds a rolled-out workload for r.HealthyFor: its pods carrying the
// change (ours says which) must stay Ready, with no container restarting,
// or the rollout has failed (an agent or app that crashes two seconds after
// Ready is a failed rollout, not a success). Pods that vanish (evicted,
// drained) or appear (scaled up) meanwhile are not held against it.
func (r *Roller) steady(ctx context.Context, w workload.Workload, ours func(*corev1.Pod) bool, progress func(string)) error {
	if r.HealthyFor <= 0 {
		return nil
	}
	obj, err := r.Cache.Get(w.Kind(), w.Name())
	if err != nil {
		return fmt.Errorf("read %s: %w", w, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(workload.Selector(obj))
	if err != nil {
		return fmt.Errorf("selector of %s: %w", w, err)
	}
	uid := workload.New(obj).Meta().GetUID()
	if progress != nil {
		progress(fmt.Sprintf("rolled out; holding for %s (--healthy-for): new pods must stay Ready with no restart", r.HealthyFor))
	}
	wctx, cancel := context.WithTimeout(ctx, r.HealthyFor)
	defer cancel()
	pods := r.Client.CoreV1().Pods(w.Namespace())
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = sel.String()
			return pods.List(wctx, o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = sel.String()
			return pods.Watch(wctx, o)
		},
	}
	seen := map[types.UID]int32{} // restarts at first sight
	var failure error
	_, err = watchtools.UntilWithSync(wctx, lw, &corev1.Pod{}, nil, func(ev watch.Event) (bool, error) {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok || ev.Type == watch.Deleted || p.DeletionTimestamp != nil || !ours(p) || !r.owns(w, uid, p) {
			return false, nil
		}
		n := restarts(p)
		first, known := seen[p.UID]
		if !known {
			seen[p.UID] = n
			first = n
		}
		switch {
		case n > first:
			failure = fmt.Errorf("%w: %s: pod %s restarted %s within %s of the rollout's end (--healthy-for)", ErrFailed, w, p.Name, lastTermination(p), r.HealthyFor)
		case known && !PodReady(p):
			failure = fmt.Errorf("%w: %s: pod %s stopped being Ready within %s of the rollout's end (--healthy-for): %s", ErrFailed, w, p.Name, r.HealthyFor, notReady(p))
		}
		return failure != nil, nil
	})
	switch {
	case failure != nil:
		return failure
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case err != nil && !errors.Is(err, watchtools.ErrWatchClosed) && wctx.Err() == nil:
		return fmt.Errorf("watch the pods of %s: %w", w, err)
	}
	return nil
}

// carriesChange tells the pods of ch's template: those with its injection
// hash, or for a removal those without its Secret's mark.
func carriesChange(ch plan.Change) func(*corev1.Pod) bool {
	return func(p *corev1.Pod) bool {
		if ch.Hash != "" {
			return p.Annotations[plan.HashAnnotation(ch.ID)] == ch.Hash
		}
		_, marked := p.Annotations[plan.SecretAnnotation(ch.ID)]
		return !marked
	}
}

// owns tells whether p belongs to the workload whose UID is uid: directly
// (StatefulSet, DaemonSet) or through one of its ReplicaSets (Deployment).
func (r *Roller) owns(w workload.Workload, uid types.UID, p *corev1.Pod) bool {
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		return false
	}
	if w.Kind() != workload.Deployment {
		return ref.UID == uid
	}
	if ref.Kind != "ReplicaSet" {
		return false
	}
	rs, err := r.Cache.ReplicaSet(ref.Name)
	if err != nil {
		return false
	}
	owner := metav1.GetControllerOf(rs)
	return owner != nil && owner.UID == uid
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		n += cs.RestartCount
	}
	return n
}

// lastTermination says which container ended last, and how.
func lastTermination(p *corev1.Pod) string {
	var name string
	var last *corev1.ContainerStateTerminated
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		t := cs.LastTerminationState.Terminated
		if t != nil && (last == nil || t.FinishedAt.After(last.FinishedAt.Time)) {
			name, last = cs.Name, t
		}
	}
	if last == nil {
		return "(a container)"
	}
	return fmt.Sprintf("(container %s exited with code %d, %s)", name, last.ExitCode, last.Reason)
}

func notReady(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			if c.Message != "" {
				return c.Message
			}
			return c.Reason
		}
	}
	return "no Ready condition"
}
