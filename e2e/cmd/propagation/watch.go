package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
)

// The series compared side by side, one update of each in turn, the order
// rotated at each update so that none always goes first:
//
//   - watch: `k8secrets-job watch` runs as shipped, the Deployment of
//     manifests/watch in the series' namespace (one replica; it asks the
//     agents directly), or with -watch-on host on this machine (the kind
//     kubeconfig, --verify-via proxy); a sample ends when its Verified Event for the
//     Deployment exists (seen through a watch on Events) and every replica
//     serves the new version;
//   - refresh: `k8secrets-job refresh` (with its default --wait, which
//     verifies each pod) right after the update, as a pipeline step would;
//   - rollout: what Reloader does, a rollout restart (the pod template
//     annotation kubectl rollout restart sets) then one watch on the
//     Deployment until the rollout is complete (kubectl rollout status's
//     test) and every new pod serves the new version.
const (
	seriesWatch   = "watch"
	seriesRefresh = "refresh"
	seriesRollout = "rollout"
)

// target is one series' Deployment.
type target struct {
	series, ns, name, secret string
	replicas                 int
	stop                     func()
}

// sideBySide deploys one Deployment per series (o.replicas pods each) and
// updates each o.refreshUpdates times.
func (b *bench) sideBySide(ctx context.Context, o options) (map[string][]sample, error) {
	series := strings.Split(o.series, ",")
	var targets []*target
	defer func() {
		for _, t := range targets {
			t.stop()
		}
	}()
	for _, s := range series {
		if s != seriesWatch && s != seriesRefresh && s != seriesRollout {
			return nil, fmt.Errorf("-series: unknown series %q (watch, refresh, rollout)", s)
		}
		ns, cleanup, err := b.namespace(ctx, "prop-"+s+"-", o.keep)
		if err != nil {
			return nil, err
		}
		t := &target{series: s, ns: ns, name: "demo", secret: "demo-secret", replicas: o.replicas, stop: cleanup}
		targets = append(targets, t)
		if err := b.deploy(ctx, ns, t.name, t.secret, int32(o.replicas)); err != nil {
			return nil, err
		}
		if s == seriesWatch {
			// Latency series: one rotation per update, never folded or
			// suspended (the flapping check runs the defaults).
			start := b.startWatch
			if o.watchOn == "cluster" {
				start = b.deployWatch
			}
			stopWatch, err := start(ctx, ns, "--min-interval=1s", "--breaker-changes=100000")
			if err != nil {
				return nil, err
			}
			t.stop = func() { stopWatch(); cleanup() }
		}
	}
	out := map[string][]sample{}
	for i := 1; i <= o.refreshUpdates; i++ {
		for k := range targets {
			t := targets[(i+k)%len(targets)]
			// The agent reloads at most once per --min-interval (1s): leave it.
			time.Sleep(1500 * time.Millisecond)
			// Each sample starts on a quiet node: no pod of a previous
			// rollout still stopping (20 of them took the load average
			// to 20-36 during the watch's samples).
			if err := b.quiet(ctx, targets); err != nil {
				return out, err
			}
			var (
				s   sample
				err error
			)
			switch t.series {
			case seriesWatch:
				s, err = b.watchSample(ctx, t, i)
			case seriesRefresh:
				s, err = b.refreshSample(ctx, t, i)
			case seriesRollout:
				s, err = b.rolloutSample(ctx, t, i)
			}
			if err != nil {
				return out, fmt.Errorf("series %s, update %d: %w", t.series, i, err)
			}
			s.Detail += fmt.Sprintf(", position %d of %d, load %s", k+1, len(targets), loadAverage())
			b.log.Info("update", "series", s.Series, "replicas", t.replicas, "n", i, "seconds", fmt.Sprintf("%.3f", s.Seconds), "detail", s.Detail)
			out[t.series] = append(out[t.series], s)
		}
	}
	return out, nil
}

// startWatch runs `k8secrets-job watch -n ns` with extra flags and waits
// until it is ready (the leader, its informers synced). It returns a
// function that stops it.
func (b *bench) startWatch(ctx context.Context, ns string, extra ...string) (func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	_ = l.Close()
	logf, err := os.Create(filepath.Join(os.TempDir(), "propagation-watch-"+ns+".log"))
	if err != nil {
		return nil, err
	}
	args := append([]string{"watch", "-n", ns, "--kubeconfig", b.kubeconfig,
		"--lease-namespace", ns, "--listen", addr}, extra...)
	wctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(wctx, b.job, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 20 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("k8secrets-job watch: %w", err)
	}
	b.log.Info("k8secrets-job watch started", "namespace", ns, "args", strings.Join(args[1:], " "), "log", logf.Name())
	stop := func() { cancel(); _ = cmd.Wait(); _ = logf.Close() }
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return stop, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("k8secrets-job watch -n %s: not ready after 1m (see %s)", ns, logf.Name())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// deployWatch applies manifests/watch in ns, its Deployment scaled to one
// replica, with the k8secrets-job image of b.tag and extra arguments, and
// waits until it leads. It returns a function that stops it (the namespace's
// deletion removes the rest).
func (b *bench) deployWatch(ctx context.Context, ns string, extra ...string) (func(), error) {
	manifests, err := filepath.Abs(filepath.Join(b.repo, "manifests"))
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "propagation-watch-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	rel, err := filepath.Rel(dir, manifests)
	if err != nil {
		return nil, err
	}
	args := append([]string{"watch", "--log-format=json", "--listen=:9534"}, extra...)
	overlay := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: %s
resources:
  - %s/watch
images:
  - name: ghcr.io/k8secrets/k8secrets-job
    newName: k8secrets-job
    newTag: %q
replicas:
  - name: k8secrets-watch
    count: 1
patches:
  - target: {kind: Deployment, name: k8secrets-watch}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/args
        value: ["%s"]
`, ns, rel, b.tag, strings.Join(args, `", "`))
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(overlay), 0o644); err != nil {
		return nil, err
	}
	rendered, err := exec.CommandContext(ctx, b.kubectl, "kustomize", dir).Output()
	if err != nil {
		return nil, fmt.Errorf("%s kustomize of the watch overlay: %w", b.kubectl, err)
	}
	apply := exec.CommandContext(ctx, b.kubectl, "--kubeconfig", b.kubeconfig, "apply", "-f", "-")
	apply.Stdin = strings.NewReader(string(rendered))
	if out, err := apply.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("kubectl apply manifests/watch in %s: %w\n%s", ns, err, out)
	}
	stop := func() {
		_ = b.client.AppsV1().Deployments(ns).Delete(context.WithoutCancel(ctx), "k8secrets-watch", metav1.DeleteOptions{})
	}
	b.log.Info("k8secrets-job watch deployed", "namespace", ns, "args", strings.Join(args[1:], " "))
	deadline := time.Now().Add(2 * time.Minute)
	for {
		l, err := b.client.CoordinationV1().Leases(ns).Get(ctx, "k8secrets-watch", metav1.GetOptions{})
		if err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
			d, err := b.client.AppsV1().Deployments(ns).Get(ctx, "k8secrets-watch", metav1.GetOptions{})
			if err == nil && d.Status.ReadyReplicas == 1 {
				return stop, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("deployment %s/k8secrets-watch: not Ready and leading after 2m", ns)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// eventWatch watches the events.k8s.io Events of ns from now on.
func (b *bench) eventWatch(ctx context.Context, ns string) (watch.Interface, error) {
	list, err := b.client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return nil, fmt.Errorf("list events of %s: %w", ns, err)
	}
	return b.client.EventsV1().Events(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
}

// watchSample updates the Secret and waits for the watch's Verified Event on
// the Deployment, then checks every replica serves the new version.
func (b *bench) watchSample(ctx context.Context, t *target, i int) (sample, error) {
	pods, err := b.pods(ctx, t.ns, t.name)
	if err != nil {
		return sample{}, err
	}
	w, err := b.eventWatch(ctx, t.ns)
	if err != nil {
		return sample{}, err
	}
	defer w.Stop()
	version := fmt.Sprintf("w%d", i)
	start := time.Now()
	if err := b.update(ctx, t.ns, t.secret, version); err != nil {
		return sample{}, err
	}
	updated := time.Since(start)
	var refreshed, verified time.Duration
	timeout := time.After(3 * time.Minute)
	for verified == 0 {
		select {
		case <-ctx.Done():
			return sample{}, ctx.Err()
		case <-timeout:
			return sample{}, fmt.Errorf("no Verified Event on deployment %s/%s within 3m of the update", t.ns, t.name)
		case e, ok := <-w.ResultChan():
			if !ok {
				return sample{}, fmt.Errorf("the watch on the Events of %s closed", t.ns)
			}
			ev, isEvent := e.Object.(*eventsv1.Event)
			if !isEvent || e.Type != watch.Added || ev.Regarding.Kind != "Deployment" || ev.Regarding.Name != t.name {
				continue
			}
			switch ev.Reason {
			case "Refreshed":
				refreshed = time.Since(start)
			case "Verified":
				verified = time.Since(start)
			case "ReloadFailed", "Unverified", "RotationSuspended", "RotationPostponed":
				return sample{}, fmt.Errorf("deployment %s/%s: %s Event: %s", t.ns, t.name, ev.Reason, ev.Note)
			}
		}
	}
	var latest time.Duration
	for _, p := range pods {
		s, err := b.app(ctx, t.ns, p.Name)
		if err != nil || s.Version != version {
			return sample{}, fmt.Errorf("pod %s/%s serves %q after the Verified Event (err %v); want %s", t.ns, p.Name, s.Version, err, version)
		}
		latest = max(latest, s.Loaded.Sub(start))
	}
	return sample{Series: seriesWatch, Update: i, Seconds: max(verified, latest).Seconds(),
		Detail: fmt.Sprintf("update call %.3fs, Refreshed Event %.3fs, last app loaded %.3fs, Verified Event %.3fs",
			updated.Seconds(), refreshed.Seconds(), latest.Seconds(), verified.Seconds())}, nil
}

// refreshSample updates the Secret, runs refresh (which waits for and
// verifies every pod), then checks every replica serves the new version.
func (b *bench) refreshSample(ctx context.Context, t *target, i int) (sample, error) {
	pods, err := b.pods(ctx, t.ns, t.name)
	if err != nil {
		return sample{}, err
	}
	version := fmt.Sprintf("r%d", i)
	start := time.Now()
	if err := b.update(ctx, t.ns, t.secret, version); err != nil {
		return sample{}, err
	}
	updated := time.Since(start)
	cmd := exec.CommandContext(ctx, b.job, "refresh", "--secret", t.secret, "-n", t.ns, "--kubeconfig", b.kubeconfig)
	if out, err := cmd.CombinedOutput(); err != nil {
		return sample{}, fmt.Errorf("k8secrets-job refresh: %v\n%s", err, out)
	}
	done := time.Since(start)
	var latest time.Duration
	for _, p := range pods {
		loaded, err := b.waitLoaded(ctx, t.ns, p.Name, version, 20*time.Millisecond, 150*time.Second)
		if err != nil {
			return sample{}, err
		}
		latest = max(latest, loaded.Sub(start))
	}
	return sample{Series: seriesRefresh, Update: i, Seconds: max(done, latest).Seconds(),
		Detail: fmt.Sprintf("update call %.3fs, last app loaded %.3fs, refresh --wait (verified) exited %.3fs",
			updated.Seconds(), latest.Seconds(), done.Seconds())}, nil
}

// rolloutSample updates the Secret, restarts the Deployment's rollout as
// kubectl rollout restart does, and waits with one watch for the rollout to
// complete and every new pod to serve the new version.
func (b *bench) rolloutSample(ctx context.Context, t *target, i int) (sample, error) {
	version := fmt.Sprintf("o%d", i)
	start := time.Now()
	if err := b.update(ctx, t.ns, t.secret, version); err != nil {
		return sample{}, err
	}
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
	d, err := b.client.AppsV1().Deployments(t.ns).Patch(ctx, t.name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return sample{}, fmt.Errorf("rollout restart deployment %s/%s: %w", t.ns, t.name, err)
	}
	restarted := time.Since(start)
	w, err := b.client.AppsV1().Deployments(t.ns).Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", t.name).String(), ResourceVersion: d.ResourceVersion})
	if err != nil {
		return sample{}, err
	}
	defer w.Stop()
	complete := rolledOut(d)
	timeout := time.After(4 * time.Minute)
	for !complete {
		select {
		case <-ctx.Done():
			return sample{}, ctx.Err()
		case <-timeout:
			return sample{}, fmt.Errorf("deployment %s/%s: rollout not complete 4m after the restart", t.ns, t.name)
		case e, ok := <-w.ResultChan():
			if !ok {
				return sample{}, fmt.Errorf("the watch on deployment %s/%s closed", t.ns, t.name)
			}
			if cur, isDeploy := e.Object.(*appsv1.Deployment); isDeploy {
				complete = rolledOut(cur)
			}
		}
	}
	rolled := time.Since(start)
	// The rollout is complete; its old pods may still be terminating.
	if err := b.waitPods(ctx, t.ns, t.name, t.replicas, version, true); err != nil {
		return sample{}, err
	}
	return sample{Series: seriesRollout, Update: i, Seconds: time.Since(start).Seconds(),
		Detail: fmt.Sprintf("update call and restart patch %.3fs, rollout complete %.3fs", restarted.Seconds(), rolled.Seconds())}, nil
}

// quiet waits until no pod of the targets' namespaces is terminating.
func (b *bench) quiet(ctx context.Context, targets []*target) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		stopping := 0
		for _, t := range targets {
			list, err := b.client.CoreV1().Pods(t.ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, p := range list.Items {
				if p.DeletionTimestamp != nil {
					stopping++
				}
			}
		}
		if stopping == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d pods still terminating after 2m", stopping)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// rolledOut is kubectl rollout status's test of a complete rollout.
func rolledOut(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want &&
		d.Status.Replicas == want && d.Status.AvailableReplicas == want
}

// flapping updates a Secret every -flap-every for -flap-for with the watch
// running at its defaults, then checks the rotations per workload (the
// Refreshed Events on the Deployment) against -flap-for / --min-interval + 1,
// that the breaker tripped (a RotationSuspended Event), and that after a
// resume every pod serves the last content.
func (b *bench) flapping(ctx context.Context, o options) error {
	ns, cleanup, err := b.namespace(ctx, "prop-flap-", o.keep)
	if err != nil {
		return err
	}
	defer cleanup()
	const name, secret = "demo", "demo-secret"
	if err := b.deploy(ctx, ns, name, secret, int32(o.replicas)); err != nil {
		return err
	}
	startWatch := b.startWatch
	if o.watchOn == "cluster" {
		startWatch = b.deployWatch
	}
	stopWatch, err := startWatch(ctx, ns)
	if err != nil {
		return err
	}
	defer stopWatch()
	w, err := b.eventWatch(ctx, ns)
	if err != nil {
		return err
	}
	defer w.Stop()
	counts := map[string]int{}
	var first []string
	collect := func() {
		for {
			select {
			case e, ok := <-w.ResultChan():
				if !ok {
					return
				}
				if ev, isEvent := e.Object.(*eventsv1.Event); isEvent && e.Type == watch.Added && ev.Regarding.Kind == "Deployment" {
					counts[ev.Reason]++
					if counts[ev.Reason] == 1 {
						first = append(first, ev.Reason+" at "+ev.EventTime.Format("15:04:05.000"))
					}
				}
			default:
				return
			}
		}
	}
	start := time.Now()
	n := 0
	for time.Since(start) < o.flapFor {
		n++
		if err := b.update(ctx, ns, secret, fmt.Sprintf("f%d", n)); err != nil {
			return err
		}
		collect()
		time.Sleep(time.Until(start.Add(time.Duration(n) * o.flapEvery)))
	}
	last := fmt.Sprintf("f%d", n)
	// Let a rotation in flight finish before counting.
	time.Sleep(5 * time.Second)
	collect()
	max := int(o.flapFor/(10*time.Second)) + 1
	fmt.Printf("\nflapping: %d updates in %s (every %s), watch at its defaults (--min-interval 10s, breaker 10 changes / 5m)\n", n, o.flapFor, o.flapEvery)
	fmt.Printf("  Events on the Deployment during the updates: %v (first: %s)\n", counts, strings.Join(first, ", "))
	var errs []error
	if counts["Refreshed"] > max {
		errs = append(errs, fmt.Errorf("%d rotations (Refreshed Events); at most %d", counts["Refreshed"], max))
	}
	if counts["RotationSuspended"] == 0 {
		errs = append(errs, errors.New("no RotationSuspended Event: the breaker did not trip"))
	}
	pods, err := b.pods(ctx, ns, name)
	if err != nil {
		return err
	}
	var before []string
	for _, p := range pods {
		st, err := b.app(ctx, ns, p.Name)
		before = append(before, fmt.Sprintf("%s=%s (err %v)", p.Name, st.Version, err))
	}
	fmt.Printf("  before the resume the pods serve: %s\n", strings.Join(before, ", "))
	// Resume: the watch rotates once, to the last content.
	s, err := b.client.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{})
	if err != nil {
		return err
	}
	s = s.DeepCopy()
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations["k8secrets.io/resume"] = time.Now().Format(time.RFC3339Nano)
	resumed := time.Now()
	if _, err := b.client.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return err
	}
	for _, p := range pods {
		if _, err := b.waitLoaded(ctx, ns, p.Name, last, 100*time.Millisecond, 2*time.Minute); err != nil {
			errs = append(errs, err)
		}
	}
	fmt.Printf("  after the resume annotation: every pod (%d) serves %s (the last) within %.1fs\n", len(pods), last, time.Since(resumed).Seconds())
	verified := counts["Verified"]
	for deadline := time.Now().Add(30 * time.Second); counts["Verified"] == verified && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		collect()
	}
	fmt.Printf("  Events on the Deployment in all: %v\n", counts)
	return errors.Join(errs...)
}
