// Package refresh makes the kubelets rewrite a Secret's volume in every pod
// that mounts it, now rather than at their next periodic sync (a minute or
// more): a change to a Pod object makes its kubelet resync that pod, and the
// resync rewrites its Secret volumes from the kubelet's current copy.
package refresh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/rollout"
)

// Options of one refresh.
type Options struct {
	Namespace, Secret string
	// AgentName is the name of the injection's agent container, whose
	// --reload argument tells whether the app is restarted.
	AgentName string
	// Settle bounds the wait for a restarting pod to restart and be Ready
	// again; a pod that has not restarted by then (its Secret content did
	// not change) is left as it is.
	Settle time.Duration
	// Selector, when set, narrows the pods to those it matches (one
	// workload's, for the watch's per-workload rotations).
	Selector string
}

// ErrNotReady: a pod restarted by the refresh was not Ready again within
// Options.Settle, and the pods after it were left alone.
var ErrNotReady = errors.New("a restarted pod is not Ready again")

// Result says what was poked.
type Result struct {
	Pod       string `json:"pod"`
	Restarted bool   `json:"restarted,omitempty"`
	// Gone: the pod was deleted before or while it was refreshed.
	Gone   bool   `json:"gone,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Pods annotates every running pod in o.Namespace that mounts o.Secret. Pods
// whose agent reloads by signal or HTTP are poked all at once; pods whose
// agent restarts the app are poked one at a time, each restarted and Ready
// before the next, so a refresh never takes all replicas down together.
func Pods(ctx context.Context, client kubernetes.Interface, o Options, log *slog.Logger) ([]Result, error) {
	// Paged: a namespace of ten thousand pods is not one response.
	pods, err := Mounting(ctx, client, o.Namespace, o.Secret, o.Selector)
	if err != nil {
		return nil, err
	}
	var now, oneByOne []*corev1.Pod
	for _, pod := range pods {
		if Restarts(pod, o.AgentName) {
			oneByOne = append(oneByOne, pod)
		} else {
			now = append(now, pod)
		}
	}
	out, err := pokeAll(ctx, client, now)
	if err != nil {
		return out, err
	}
	if len(oneByOne) > 1 {
		// The pods after the first wait their turn; held, their agents do
		// not restart on their own after --turn-hold should this pass stop
		// (a pod not Ready again with the new content) or die. Each poke
		// releases its pod.
		why := fmt.Sprintf("%s: refresh of secret %s restarts its pods one at a time; this one waits its turn", time.Now().UTC().Format(time.RFC3339), o.Secret)
		if err := holdAll(ctx, client, oneByOne[1:], why); err != nil {
			return out, err
		}
	}
	for i, p := range oneByOne {
		before := restartCount(p)
		wasReady := rollout.PodReady(p)
		gone, err := Poke(ctx, client, p)
		if err != nil {
			return out, err
		}
		if gone {
			// Deleted since the list (a rollout, a scale-down, an
			// eviction): its replacement starts with the current Secret.
			out = append(out, result(p, false, true, ""))
			continue
		}
		restarted, gone, down, err := waitRestarted(ctx, client, p, before, o.Settle)
		if err != nil {
			return out, err
		}
		if down && !restarted && !gone {
			why := "went down and was not Ready again"
			if !wasReady {
				why = "was not Ready before its refresh, and is not Ready"
			}
			out = append(out, Result{Pod: p.Name, Detail: fmt.Sprintf("%s within %s", why, o.Settle)})
			if i < len(oneByOne)-1 {
				// Restarting another pod now could take two down at once.
				return out, fmt.Errorf("%w: pod %s/%s %s within --settle %s (a crash-loop backoff of the kubelet, an app that fails with the new content, or a pod unhealthy already); stopped before the next of %d pods, so that two are never down at once, and the %d left are held (annotation %s) until their turn; see its Events, then refresh again", ErrNotReady, p.Namespace, p.Name, why, o.Settle, len(oneByOne), len(oneByOne)-1-i, wellknown.HeldAnnotation)
			}
			log.Warn("refreshed pod not Ready", "namespace", p.Namespace, "name", p.Name, "detail", why)
			continue
		}
		r := result(p, restarted, gone, fmt.Sprintf("not restarted within %s: its Secret content had not changed, or the agent is still waiting", o.Settle))
		log.Info("refreshed", "namespace", p.Namespace, "name", p.Name, "restarted", restarted, "gone", gone)
		out = append(out, r)
	}
	return out, nil
}

// parallel bounds the pokes in flight. One after the other, the last of 20
// pods was poked a round trip per pod after the first (make
// bench-propagation); all at once, a thousand pods would be a thousand
// requests queued at once. The client's rate limiter still applies.
const parallel = 16

// pokeAll pokes pods at once, parallel at a time, and returns their
// results in order. The first error cancels the pokes in flight, stops
// those not yet sent, and is returned with the results of those that
// succeeded.
func pokeAll(ctx context.Context, client kubernetes.Interface, pods []*corev1.Pod) ([]Result, error) {
	res := make([]Result, len(pods))
	done := make([]bool, len(pods))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for i, p := range pods {
		if ctx.Err() != nil {
			break // the first error ends the refresh, as it did one by one
		}
		g.Go(func() error {
			gone, err := Poke(ctx, client, p)
			if err != nil {
				return err
			}
			res[i], done[i] = result(p, false, gone, ""), true
			return nil
		})
	}
	// Wait's error is the first one returned: the error that cancelled
	// the others, not their cancellation.
	err := g.Wait()
	var out []Result
	for i := range pods {
		if done[i] {
			out = append(out, res[i])
		}
	}
	return out, err
}

// pageSize is how many pods one list request returns.
var pageSize int64 = 500

// Gone is the detail of a pod deleted before or while it was refreshed.
const Gone = "gone: deleted before or while being refreshed; its replacement mounts the current Secret"

func result(p *corev1.Pod, restarted, gone bool, notRestarted string) Result {
	r := Result{Pod: p.Name, Restarted: restarted, Gone: gone}
	switch {
	case gone:
		r.Detail = Gone
	case !restarted && notRestarted != "":
		r.Detail = notRestarted
	}
	return r
}

func mounts(p *corev1.Pod, secret string) bool {
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

// Restarts tells whether the pod's agent (the container named agent)
// restarts the app: such pods are refreshed one at a time, never poked
// together.
func Restarts(p *corev1.Pod, agent string) bool {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name != agent {
			continue
		}
		for _, a := range c.Args {
			if a == "--reload=restart" || a == "--reload=restart-all" {
				return true
			}
		}
	}
	return false
}

// Poke annotates the pod, which makes its kubelet resync it now, and
// releases it if it was held (its turn has come); gone reports that it no
// longer exists (404), which is no error: there is nothing left to refresh.
func Poke(ctx context.Context, client kubernetes.Interface, p *corev1.Pod) (gone bool, err error) {
	return annotate(ctx, client, p, map[string]*string{
		wellknown.RefreshAnnotation: new(time.Now().UTC().Format(time.RFC3339Nano)),
		wellknown.HeldAnnotation:    nil,
	})
}

// annotate merge-patches the pod's annotations (nil removes one).
func annotate(ctx context.Context, client kubernetes.Interface, p *corev1.Pod, ann map[string]*string) (gone bool, err error) {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	_, err = client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: wellknown.FieldManager})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("annotate pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return false, nil
}

// Hold sets the restart-held annotation, saying why, on the running pods
// of o (o.Selector's, mounting o.Secret) whose agent restarts the app and
// that are not held yet: their agents then restart only on their turn, not
// on their own after --turn-hold. The watch holds a workload's pods while
// its rotation waits for pods to be available. It returns how many pods it
// held.
func Hold(ctx context.Context, client kubernetes.Interface, o Options, why string) (int, error) {
	pods, err := Mounting(ctx, client, o.Namespace, o.Secret, o.Selector)
	if err != nil {
		return 0, err
	}
	var hold []*corev1.Pod
	for _, p := range pods {
		if Restarts(p, o.AgentName) && p.Annotations[wellknown.HeldAnnotation] == "" {
			hold = append(hold, p)
		}
	}
	return len(hold), holdAll(ctx, client, hold, why)
}

// holdAll sets the pods' restart-held annotation to why, parallel at a
// time; pods deleted meanwhile are skipped.
func holdAll(ctx context.Context, client kubernetes.Interface, pods []*corev1.Pod, why string) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for _, p := range pods {
		g.Go(func() error {
			_, err := annotate(ctx, client, p, map[string]*string{wellknown.HeldAnnotation: &why})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("hold the pods left to restart: %w", err)
	}
	return nil
}

// restartCount sums the restarts of the pod's app containers.
func restartCount(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		if !strings.HasPrefix(s.Name, wellknown.AgentContainerPrefix+"-") {
			n += s.RestartCount
		}
	}
	return n
}

// repokeEvery is how often waitRestarted pokes again a pod whose app has
// not gone down yet. A poke sent just after the Secret's update can make
// the kubelet resync the pod before its own watch of the Secret has the new
// data: it then writes the old content, and the pod, whose agent restarts
// only on a turn (plan.withTurns), would wait for the next poke. One such
// pod of five, measured (make bench-propagation, restart series).
var repokeEvery = 2 * time.Second

// waitRestarted waits, at most settle, for the pod's app to have restarted
// since before and the pod to be Ready again, poking the pod again every
// repokeEvery until its app goes down. A pod that is deleted (or is being
// deleted, or is already gone when the wait starts) ends the wait at once
// with gone: settle is not spent on it.
//
// down reports that the app was seen down (not Ready, or restarted) and,
// without restarted, is not Ready again.
func waitRestarted(ctx context.Context, client kubernetes.Interface, p *corev1.Pod, before int32, settle time.Duration) (restarted, gone, down bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, settle)
	defer cancel()
	// Poked again only while the app is seen up: not before the wait has
	// seen the pod, nor once the app went down (it is restarting).
	var seen, wentDown, ready atomic.Bool
	see := func(cur *corev1.Pod) {
		seen.Store(true)
		ready.Store(rollout.PodReady(cur))
		if restartCount(cur) > before || !rollout.PodReady(cur) {
			wentDown.Store(true)
		}
	}
	repoked := make(chan struct{})
	go func() {
		defer close(repoked)
		t := time.NewTicker(repokeEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if seen.Load() && !wentDown.Load() {
					_, _ = Poke(ctx, client, p) // a failure ends nothing: the wait decides
				}
			}
		}
	}()
	defer func() { cancel(); <-repoked }()
	sel := fields.OneTermEqualSelector("metadata.name", p.Name).String()
	pods := client.CoreV1().Pods(p.Namespace)
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
	// The same pod, not a namesake that replaced it (a StatefulSet's).
	same := func(cur *corev1.Pod) bool { return cur.Name == p.Name && cur.UID == p.UID }
	_, err = watchtools.UntilWithSync(ctx, cache.ToListWatcherWithWatchListSemantics(lw, client), &corev1.Pod{}, func(store cache.Store) (bool, error) {
		obj, exists, err := store.GetByKey(p.Namespace + "/" + p.Name)
		if err != nil {
			return false, err
		}
		if !exists || !same(obj.(*corev1.Pod)) || obj.(*corev1.Pod).DeletionTimestamp != nil {
			gone = true
			return true, nil
		}
		cur := obj.(*corev1.Pod)
		see(cur)
		restarted = restartCount(cur) > before && rollout.PodReady(cur)
		return restarted, nil
	}, func(ev watch.Event) (bool, error) {
		cur, ok := ev.Object.(*corev1.Pod)
		if !ok || cur.Name != p.Name {
			return false, nil
		}
		if ev.Type == watch.Deleted || !same(cur) || cur.DeletionTimestamp != nil {
			gone = true
			return true, nil
		}
		see(cur)
		restarted = restartCount(cur) > before && rollout.PodReady(cur)
		return restarted, nil
	})
	switch {
	case err == nil:
		return restarted, gone, false, nil
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		// Settled without a restart; down if the app went down and is
		// not back.
		return false, false, wentDown.Load() && !ready.Load(), nil
	}
	return false, false, false, fmt.Errorf("wait for pod %s/%s to restart: %w", p.Namespace, p.Name, err)
}
