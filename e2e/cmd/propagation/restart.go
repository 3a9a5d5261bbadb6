package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// restartSeries: the watch (as in the watch series) over a Deployment of
// -restart-replicas pods injected with --reload restart, updated
// -restart-updates times. A sample ends at the Verified Event, and counts
// only if, watched throughout through the pods themselves, every pod's app
// container restarted exactly once (same pods, none replaced), never more
// than one pod was not Ready at a time, and every app serves the new
// version.
func (b *bench) restartSeries(ctx context.Context, o options) ([]sample, error) {
	ns, cleanup, err := b.namespace(ctx, "prop-restart-", o.keep)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	const name, secret = "demo", "demo-secret"
	if err := b.deploy(ctx, ns, name, secret, int32(o.restartReplicas), "restart"); err != nil {
		return nil, err
	}
	startWatch := b.startWatch
	if o.watchOn == "cluster" {
		startWatch = b.deployWatch
	}
	stopWatch, err := startWatch(ctx, ns, "--min-interval=1s", "--breaker-changes=100000")
	if err != nil {
		return nil, err
	}
	defer stopWatch()
	var out []sample
	for i := 1; i <= o.restartUpdates; i++ {
		time.Sleep(1500 * time.Millisecond)
		s, err := b.restartSample(ctx, ns, name, secret, i)
		if err != nil {
			return out, fmt.Errorf("restart series, update %d: %w", i, err)
		}
		s.Detail += ", load " + loadAverage()
		b.log.Info("update", "series", s.Series, "replicas", o.restartReplicas, "n", i, "seconds", fmt.Sprintf("%.3f", s.Seconds), "detail", s.Detail, "starts", s.Starts)
		out = append(out, s)
	}
	return out, nil
}

func (b *bench) restartSample(ctx context.Context, ns, name, secret string, i int) (sample, error) {
	list, err := b.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		return sample{}, err
	}
	before := map[string]int32{}
	for _, p := range list.Items {
		before[p.Name] = appRestarts(&p)
	}
	pw, err := b.client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: "app=" + name, ResourceVersion: list.ResourceVersion})
	if err != nil {
		return sample{}, err
	}
	defer pw.Stop()
	ew, err := b.eventWatch(ctx, ns)
	if err != nil {
		return sample{}, err
	}
	defer ew.Stop()
	notReady := map[string]bool{}
	mostDown := 0
	var replaced []string
	seePod := func(e watch.Event) {
		p, ok := e.Object.(*corev1.Pod)
		if !ok {
			return
		}
		if _, known := before[p.Name]; !known || e.Type == watch.Deleted {
			replaced = append(replaced, p.Name)
			return
		}
		notReady[p.Name] = !ready(p)
		down := 0
		for _, d := range notReady {
			if d {
				down++
			}
		}
		mostDown = max(mostDown, down)
	}
	version := fmt.Sprintf("x%d", i)
	start := time.Now()
	if err := b.update(ctx, ns, secret, version); err != nil {
		return sample{}, err
	}
	var verified time.Duration
	timeout := time.After(5 * time.Minute)
	for verified == 0 {
		select {
		case <-ctx.Done():
			return sample{}, ctx.Err()
		case <-timeout:
			return sample{}, fmt.Errorf("no Verified Event on deployment %s/%s within 5m of the update", ns, name)
		case e, ok := <-pw.ResultChan():
			if !ok {
				return sample{}, fmt.Errorf("the watch on the pods of %s closed: the pods were not watched throughout", ns)
			}
			seePod(e)
		case e, ok := <-ew.ResultChan():
			if !ok {
				return sample{}, fmt.Errorf("the watch on the Events of %s closed", ns)
			}
			ev, isEvent := e.Object.(*eventsv1.Event)
			if !isEvent || e.Type != watch.Added || ev.Regarding.Kind != "Deployment" || ev.Regarding.Name != name {
				continue
			}
			switch ev.Reason {
			case "Verified":
				verified = time.Since(start)
			case "ReloadFailed", "Unverified", "RotationSuspended", "RotationPostponed":
				return sample{}, fmt.Errorf("deployment %s/%s: %s Event: %s", ns, name, ev.Reason, ev.Note)
			}
		}
	}
	// The pod events of the last moments before the Event.
	for drained := false; !drained; {
		select {
		case e, ok := <-pw.ResultChan():
			if !ok {
				drained = true
				break
			}
			seePod(e)
		default:
			drained = true
		}
	}
	after, err := b.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		return sample{}, err
	}
	var problems []string
	if len(replaced) > 0 {
		problems = append(problems, "pods replaced or added: "+strings.Join(slices.Compact(slices.Sorted(slices.Values(replaced))), ", "))
	}
	for _, p := range after.Items {
		if got := appRestarts(&p) - before[p.Name]; got != 1 {
			problems = append(problems, fmt.Sprintf("pod %s: app restarted %d times; want 1", p.Name, got))
		}
		if s, err := b.app(ctx, ns, p.Name); err != nil || s.Version != version {
			problems = append(problems, fmt.Sprintf("pod %s serves %q (err %v); want %s", p.Name, s.Version, err, version))
		}
	}
	if len(problems) > 0 {
		return sample{}, fmt.Errorf("deployment %s/%s after the Verified Event: %s", ns, name, strings.Join(problems, "; "))
	}
	// More than one down at once is reported, not an error: see restartSeries.
	return sample{Series: "restart", Update: i, Seconds: verified.Seconds(), MostDown: mostDown, Starts: starts(after.Items, before),
		Detail: fmt.Sprintf("%d pods each restarted once in place, at most %d not Ready at a time", len(after.Items), mostDown)}, nil
}

// starts lists, in time order, when each pod's demo container started (its
// restart) against when the pod was poked (its refresh annotation): a
// restart before its pod was poked came from the kubelet's own periodic
// sync of that pod, not from the watch.
func starts(pods []corev1.Pod, before map[string]int32) string {
	type start struct {
		pod           string
		started, poke time.Time
	}
	var ss []start
	for _, p := range pods {
		s := start{pod: p.Name}
		for _, c := range p.Status.ContainerStatuses {
			if c.Name == "demo" && c.State.Running != nil {
				s.started = c.State.Running.StartedAt.Time
			}
		}
		s.poke, _ = time.Parse(time.RFC3339Nano, p.Annotations["k8secrets.io/refreshed-at"])
		ss = append(ss, s)
	}
	slices.SortFunc(ss, func(a, b start) int { return a.started.Compare(b.started) })
	var out []string
	for _, s := range ss {
		note := ""
		if s.started.Before(s.poke.Truncate(time.Second)) {
			note = " BEFORE its poke"
		}
		out = append(out, fmt.Sprintf("%s started %s, poked %s%s", s.pod, s.started.Format("15:04:05"), s.poke.Format("15:04:05.000"), note))
	}
	return strings.Join(out, "; ")
}

// appRestarts is the restart count of the demo container.
func appRestarts(p *corev1.Pod) int32 {
	for _, c := range p.Status.ContainerStatuses {
		if c.Name == "demo" {
			return c.RestartCount
		}
	}
	return 0
}
