package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pmezard/go-difflib/difflib"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/config"
	"github.com/k8secrets/k8secrets/job/internal/lock"
	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/record"
	"github.com/k8secrets/k8secrets/job/internal/refresh"
	"github.com/k8secrets/k8secrets/job/internal/rollout"
	"github.com/k8secrets/k8secrets/job/internal/secret"
	"github.com/k8secrets/k8secrets/job/internal/verify"
	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// exitCode maps an error of run to the documented exit codes
// (config.ExitCodes).
func exitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, config.ErrInvalid):
		return 2
	case errors.Is(err, secret.ErrUnusable):
		return 3
	case errors.Is(err, plan.ErrConflict), errors.Is(err, rollout.ErrRejected), errors.Is(err, rollout.ErrRefused):
		return 4
	case errors.Is(err, rollout.ErrRollbackFailed):
		return 6
	case errors.Is(err, rollout.ErrRolledBack):
		return 5
	case errors.Is(err, rollout.ErrNotOurs):
		return 8
	case errors.Is(err, lock.ErrHeld):
		return 7
	case errors.Is(err, verify.ErrNotVerified), errors.Is(err, verify.ErrCannotVerify), errors.Is(err, refresh.ErrNotReady):
		return 9
	}
	return 1
}

// job is one run of a command against one cluster.
type job struct {
	cfg    config.Config
	client kubernetes.Interface
	log    *slog.Logger
	// holder identifies this run in the Lease and in Events: host, PID
	// and a random part, so that two runs never share it (not even two in
	// one test process).
	holder string
	report record.Report
}

// run executes cfg.Command. ns is the namespace to use when cfg names none.
// The report is filled in as far as the run got, also on error.
func run(ctx context.Context, cfg config.Config, client kubernetes.Interface, ns string, log *slog.Logger) (record.Report, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = ns
	}
	host, _ := os.Hostname()
	j := &job{cfg: cfg, client: client, log: log, holder: fmt.Sprintf("%s/%d/%08x", host, os.Getpid(), rand.Uint32())}
	j.report = record.Report{Command: cfg.Command, Namespace: cfg.Namespace, Secret: cfg.Secret, Selector: cfg.Selector, DryRun: cfg.DryRun}
	var err error
	switch cfg.Command {
	case config.Inject, config.Remove:
		err = j.change(ctx)
	case config.Status:
		err = j.status(ctx)
	case config.Refresh:
		err = j.refresh(ctx)
	case config.WatchCommand:
		err = j.watch(ctx)
	default:
		err = fmt.Errorf("%w: unknown command %q", config.ErrInvalid, cfg.Command)
	}
	if err != nil {
		j.report.Error = err.Error()
	}
	j.report.ExitCode = exitCode(err)
	return j.report, err
}

// change runs inject or remove: plan, dry-run, then roll out.
func (j *job) change(ctx context.Context) error {
	cfg := j.cfg
	if cfg.Command == config.Inject {
		info, err := secret.Load(ctx, j.client, cfg.Namespace, cfg.Secret)
		if err != nil {
			return err
		}
		for _, w := range info.Warnings {
			j.log.Warn(w)
			j.report.Warnings = append(j.report.Warnings, w)
		}
	}
	if !cfg.DryRun {
		// After the Secret's check (a read), before listing and planning,
		// so that no plan predates the writes of the run that held the
		// lease before us. A dry-run writes nothing and takes no lease: it
		// may run beside a real run (its diff is as of its own reads).
		l, err := lock.Acquire(ctx, j.client, cfg.Namespace, "k8secrets-"+plan.ID(cfg.Secret), j.holder, j.log)
		if err != nil {
			return hint(err)
		}
		defer j.release(ctx, l)
		var stop context.CancelFunc
		ctx, stop = l.Guard(ctx)
		defer stop()
	}
	pods, err := workload.RunningPods(ctx, j.client, cfg.Namespace, cfg.Selector)
	if err != nil {
		return hint(err)
	}
	if len(pods) == 0 {
		j.log.Info("no running pods match; nothing to do", "namespace", cfg.Namespace, "selector", cfg.Selector)
		j.report.Warnings = append(j.report.Warnings, fmt.Sprintf("no running pods match %q in namespace %s; nothing changed", cfg.Selector, cfg.Namespace))
		return nil
	}

	c := workload.NewCache(j.client, cfg.Namespace)
	// Not cancelled by an interrupt or a lost lease: a rollback already
	// started goes on after those, and it follows the workload through
	// these informers. They stop when change returns.
	cctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer func() { stop(); c.Shutdown() }()
	if err := c.Start(cctx, ctx); err != nil {
		return hint(err)
	}
	workloads, skipped, err := workload.Resolve(pods, c)
	if err != nil {
		return hint(err)
	}
	j.report.Skipped = skipped
	for _, s := range skipped {
		j.log.Info("skipping pod", "pod", s.Pod, "owner", s.Owner, "reason", s.Reason)
	}

	changes, err := j.plan(ctx, workloads)
	if err != nil {
		return err
	}
	if changes, err = j.preflight(changes); err != nil {
		return err
	}
	r := &rollout.Roller{Client: j.client, Cache: c, Timeout: cfg.Timeout, HealthyFor: cfg.HealthyFor, Log: j.log}
	var each func(int, runtime.Object)
	if cfg.DryRun {
		// Render each diff as its answer arrives rather than keeping a
		// thousand objects for the end.
		each = func(i int, obj runtime.Object) {
			e := &j.report.Workloads[i]
			e.Result = record.WouldChange
			e.Diff = diff(changes[i].Workload.Template(), workload.Template(obj))
		}
	}
	if err := r.DryRun(ctx, changes, each); err != nil {
		for i := range j.report.Workloads {
			j.report.Workloads[i].Result = record.Rejected
		}
		return fmt.Errorf("nothing was changed: %w", err)
	}
	if cfg.DryRun {
		return nil
	}
	return j.roll(ctx, r, changes)
}

// release lets a lease go, bounded: with the API server gone, an unanswered
// request would keep the process alive; the lease then expires by itself.
func (j *job) release(ctx context.Context, l *lock.Lock) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := l.Release(rctx); err != nil {
		j.log.Warn("release lock; it expires by itself", "error", err, "after", lock.Duration)
	}
}

// plan plans every workload; conflicts are all reported at once.
func (j *job) plan(ctx context.Context, workloads []workload.Workload) ([]plan.Change, error) {
	cfg := j.cfg
	opts := plan.Options{
		Secret: cfg.Secret, MountPath: cfg.MountPath, Containers: cfg.Containers,
		Agent: cfg.Agent, AgentImage: cfg.AgentImage, Reload: cfg.Reload,
	}
	if cfg.Command == config.Inject && cfg.Agent {
		sv := j.serverVersion()
		opts.NativeSidecar = sv != nil && sv.AtLeast(version.MajorMinor(1, 29))
		opts.RestartAllContainers = sv != nil && sv.AtLeast(version.MajorMinor(1, 36))
	}
	var changes []plan.Change
	var errs []error
	for _, w := range workloads {
		var ch plan.Change
		if cfg.Command == config.Inject {
			var err error
			if ch, err = plan.Inject(w, opts); err != nil {
				errs = append(errs, err)
				j.report.Workloads = append(j.report.Workloads, entry(w, record.Rejected, err.Error()))
				continue
			}
		} else {
			ch = plan.Remove(w, cfg.Secret)
		}
		e := entry(w, "", ch.Skip)
		e.Hash, e.Notes = ch.Hash, ch.Notes
		e.Secret = cfg.Secret
		j.report.Workloads = append(j.report.Workloads, e)
		changes = append(changes, ch)
		for _, n := range ch.Notes {
			j.log.Warn(n, "kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("nothing was changed: %w", err)
	}
	return changes, nil
}

// serverVersion is the API server's Kubernetes version, nil if unknown. It
// decides what the agent can be: a native sidecar (an init container with
// restartPolicy Always, 1.29 and later), with restart rules that restart
// every container (restart-all, 1.36 and later).
func (j *job) serverVersion() *version.Version {
	v, err := j.client.Discovery().ServerVersion()
	if err == nil {
		var sv *version.Version
		if sv, err = version.ParseGeneric(v.GitVersion); err == nil {
			return sv
		}
	}
	j.log.Warn("server version unknown; adding the agent as a regular container", "error", err)
	return nil
}

func entry(w workload.Workload, result, detail string) record.Entry {
	return record.Entry{Kind: string(w.Kind()), Namespace: w.Namespace(), Name: w.Name(), Pods: w.Pods, Result: result, Detail: detail}
}

// roll applies the changes, up to cfg.MaxParallel workloads at a time (one
// by default), each waited for and, if it fails, rolled back on its own. The
// first failure stops new rollouts from starting; those in flight finish
// (or are rolled back) before roll returns every failure, in plan order.
func (j *job) roll(ctx context.Context, r *rollout.Roller, changes []plan.Change) error {
	ev := &record.Events{Client: j.client, Instance: j.holder, Log: j.log}
	errs := make([]error, len(changes))
	var failed atomic.Bool
	var wg sync.WaitGroup
	slots := make(chan struct{}, max(j.cfg.MaxParallel, 1))
	for i, ch := range changes {
		slots <- struct{}{}
		if failed.Load() {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			if err := j.rollOne(ctx, r, ev, i, ch); err != nil {
				errs[i] = err
				// A workload unhealthy for someone else's reason says
				// nothing against this change: go on with the others.
				if !errors.Is(err, rollout.ErrNotOurs) {
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	for k := range j.report.Workloads {
		if j.report.Workloads[k].Result == "" {
			j.report.Workloads[k].Result = record.NotReached
		}
	}
	return errors.Join(errs...)
}

// rollOne rolls out changes[i] (or, on a rerun, finishes its unfinished
// rollout) and records the outcome in the report and in Events.
func (j *job) rollOne(ctx context.Context, r *rollout.Roller, ev *record.Events, i int, ch plan.Change) error {
	e := &j.report.Workloads[i]
	w := ch.Workload
	progress := func(msg string) {
		j.log.Info("rollout", "kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "state", msg)
		e.Rollout = msg
		track(w.String(), msg)
	}
	track(w.String(), "starting")
	defer untrack(w.String())
	if ch.Skip == "" || j.cfg.Command == config.Inject && !settled(r, w) {
		// One run per workload too: a run for another Secret may be rolling
		// it out (or back) right now.
		// Wait as long as a rollout may take, and at least long enough to
		// take over the lease of a run that was killed.
		wait := max(j.cfg.Timeout, lock.Duration+2*lock.RetryPeriod)
		l, err := lock.Wait(ctx, j.client, w.Namespace(), lock.WorkloadName(string(w.Kind()), w.Name()), j.holder+" secret="+j.cfg.Secret, wait, j.log)
		if err != nil {
			e.Result, e.Detail = record.Failed, err.Error()
			return hint(fmt.Errorf("%s: nothing changed on it: %w", w, err))
		}
		defer j.release(ctx, l)
		var stop context.CancelFunc
		ctx, stop = l.Guard(ctx)
		defer stop()
	}
	if ch.Skip != "" {
		e.Result = record.Unchanged
		// A rerun: finish the rollout an interrupted run started, and only
		// that one.
		waited, err := r.Converge(ctx, ch, progress)
		if err != nil {
			j.failed(ctx, ev, e, w, err)
			return err
		}
		if waited {
			e.Detail = ch.Skip + "; waited for the unfinished rollout this Job started"
			if j.cfg.Command == config.Inject {
				e.Detail = "already injected; waited for its unfinished rollout"
			}
		}
		return nil
	}
	j.log.Info("applying", "kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "fieldManager", plan.FieldManager(ch.ID))
	if err := r.Roll(ctx, ch, progress); err != nil {
		j.failed(ctx, ev, e, w, err)
		return err
	}
	if j.cfg.Command == config.Inject {
		e.Result = record.Injected
		ev.Emit(ctx, w, corev1.EventTypeNormal, record.ReasonInjected, "Inject",
			fmt.Sprintf("mounted secret %s at %s (injection hash %s) and rolled out", j.cfg.Secret, j.cfg.MountPath, ch.Hash))
	} else {
		e.Result = record.Removed
		ev.Emit(ctx, w, corev1.EventTypeNormal, record.ReasonRemoved, "Remove",
			fmt.Sprintf("removed the injection of secret %s and rolled out", j.cfg.Secret))
	}
	return nil
}

// settled tells whether the workload's rollout, as cached, is finished: a
// rerun then has nothing to converge and needs no workload lease.
func settled(r *rollout.Roller, w workload.Workload) bool {
	obj, err := r.Cache.Get(w.Kind(), w.Name())
	if err != nil {
		return false
	}
	_, done, err := rollout.Status(obj)
	return done && err == nil
}

func (j *job) failed(ctx context.Context, ev *record.Events, e *record.Entry, w workload.Workload, err error) {
	// Also after an interrupt: a finished rollback deserves its Events.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	e.Detail = err.Error()
	switch {
	case errors.Is(err, rollout.ErrRollbackFailed):
		e.Result = record.RollbackFailed
	case errors.Is(err, rollout.ErrRolledBack):
		e.Result = record.RolledBack
	case errors.Is(err, rollout.ErrNotOurs):
		e.Result = record.NotOurs
	default:
		e.Result = record.Failed
	}
	if errors.Is(err, rollout.ErrRolledBack) || errors.Is(err, rollout.ErrRollbackFailed) {
		ev.Emit(ctx, w, corev1.EventTypeWarning, record.ReasonRolloutFailed, "Rollout", err.Error())
		if errors.Is(err, rollout.ErrRolledBack) {
			ev.Emit(ctx, w, corev1.EventTypeNormal, record.ReasonRolledBack, "Rollback", "applied this injection's previous fields again (nothing else); pods are healthy")
		}
	}
	if ws := rollout.ChangedBy(err); len(ws) > 0 {
		for _, o := range ws {
			e.ChangedBy = append(e.ChangedBy, o.String())
		}
		ev.Emit(ctx, w, corev1.EventTypeWarning, record.ReasonChangedByOthers, "Rollback",
			"the pod template was changed during the rollout by "+strings.Join(e.ChangedBy, "; ")+"; the rollback left those changes in place")
	}
}

// status lists the workloads carrying an injection, with their rollout state.
func (j *job) status(ctx context.Context) error {
	var sel labels.Selector
	if j.cfg.Selector != "" {
		sel, _ = labels.Parse(j.cfg.Selector) // validated by config
	}
	opts := metav1.ListOptions{LabelSelector: wellknown.LabelInjected + "=true"}
	apps := j.client.AppsV1()
	ns := j.cfg.Namespace
	var objs []runtime.Object
	dl, err := apps.Deployments(ns).List(ctx, opts)
	if err != nil {
		return hint(fmt.Errorf("list deployments in %s: %w", ns, err))
	}
	for i := range dl.Items {
		objs = append(objs, &dl.Items[i])
	}
	sl, err := apps.StatefulSets(ns).List(ctx, opts)
	if err != nil {
		return hint(fmt.Errorf("list statefulsets in %s: %w", ns, err))
	}
	for i := range sl.Items {
		objs = append(objs, &sl.Items[i])
	}
	dsl, err := apps.DaemonSets(ns).List(ctx, opts)
	if err != nil {
		return hint(fmt.Errorf("list daemonsets in %s: %w", ns, err))
	}
	for i := range dsl.Items {
		objs = append(objs, &dsl.Items[i])
	}
	for _, obj := range objs {
		w := workload.New(obj)
		t := w.Template()
		if sel != nil && !sel.Matches(labels.Set(t.Labels)) {
			continue
		}
		msg, done, serr := rollout.Status(obj)
		state := msg
		if serr != nil {
			state = serr.Error()
		} else if !done {
			state = "rolling out: " + msg
		}
		for k, name := range t.Annotations {
			id, ok := strings.CutPrefix(k, wellknown.AnnotationSecretPrefix)
			if !ok || (j.cfg.Secret != "" && name != j.cfg.Secret) {
				continue
			}
			e := entry(w, "injected", "")
			e.Pods = 0
			e.Secret, e.Hash, e.Rollout = name, t.Annotations[plan.HashAnnotation(id)], state
			j.report.Workloads = append(j.report.Workloads, e)
		}
	}
	j.statusPods(ctx)
	return nil
}

// refresh pokes the pods that mount the Secret so their kubelets rewrite
// its volume now.
func (j *job) refresh(ctx context.Context) error {
	res, err := refresh.Pods(ctx, j.client, refresh.Options{
		Namespace: j.cfg.Namespace, Secret: j.cfg.Secret,
		AgentName: plan.AgentName(plan.ID(j.cfg.Secret)), Settle: j.cfg.Settle,
	}, j.log)
	for _, r := range res {
		e := record.Entry{Kind: "Pod", Namespace: j.cfg.Namespace, Name: r.Pod, Pods: 1, Result: "refreshed", Detail: r.Detail, Secret: j.cfg.Secret}
		if r.Restarted {
			e.Result = "refreshed, restarted"
		}
		if r.Gone {
			e.Result = "gone"
		}
		j.report.Workloads = append(j.report.Workloads, e)
	}
	if err == nil && len(res) == 0 {
		j.report.Warnings = append(j.report.Warnings, fmt.Sprintf("no running pod in %s mounts secret %s", j.cfg.Namespace, j.cfg.Secret))
	}
	if err == nil && j.cfg.Wait {
		return j.waitVerified(ctx)
	}
	return hint(err)
}

// hint adds the fix to an RBAC refusal.
func hint(err error) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%w; grant the missing verb to this identity (the Role in manifests/base lists what the Job needs)", err)
	}
	return err
}

// diff renders the change of a pod template as a unified diff of its YAML.
func diff(before, after *corev1.PodTemplateSpec) string {
	a, _ := yaml.Marshal(plan.Redacted(before))
	b, _ := yaml.Marshal(plan.Redacted(after))
	out, _ := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(string(a)), B: difflib.SplitLines(string(b)),
		FromFile: "current", ToFile: "planned", Context: 2,
	})
	return out
}
