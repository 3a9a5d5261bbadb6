// Package rollout applies planned changes with server-side apply, after a
// server-side dry-run of all of them, waits for each workload to become
// healthy, and rolls back what does not.
package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// Sentinel errors; the Job maps them to exit codes.
var (
	// ErrRejected: a server-side dry-run refused a change (exit 4).
	ErrRejected = errors.New("rejected by server-side dry-run")
	// ErrFailed: a rollout failed or timed out.
	ErrFailed = errors.New("rollout failed")
	// ErrRolledBack: a rollout failed and was rolled back (exit 5).
	ErrRolledBack = errors.New("rolled back")
	// ErrRollbackFailed: the rollback failed too (exit 6).
	ErrRollbackFailed = errors.New("rollback failed")
	// ErrUnreachable: the API server could not be reached while waiting;
	// the rollout's fate is unknown, so nothing is rolled back.
	ErrUnreachable = errors.New("lost contact with the API server")
)

// Roller applies changes and waits for them.
type Roller struct {
	Client kubernetes.Interface
	Cache  *workload.Cache
	// Timeout bounds each workload's rollout, and again its rollback.
	Timeout time.Duration
	// HealthyFor is how long a rolled-out workload's new pods must then stay
	// Ready with no restart before it counts as rolled out (0: not held).
	HealthyFor time.Duration
	Log        *slog.Logger

	// written holds, per workload, the object our last write returned.
	written sync.Map
}

// Apply sends a change's apply configuration under its field manager, as a
// dry-run if dryRun, and returns the object as the server would store it.
func (r *Roller) Apply(ctx context.Context, ch plan.Change, dryRun bool) (runtime.Object, error) {
	return apply(ctx, r.Client, ch.Apply, plan.FieldManager(ch.ID), dryRun)
}

func apply(ctx context.Context, c kubernetes.Interface, ac any, manager string, dryRun bool) (runtime.Object, error) {
	opts := metav1.ApplyOptions{FieldManager: manager}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	switch a := ac.(type) {
	case *appsv1ac.DeploymentApplyConfiguration:
		return c.AppsV1().Deployments(*a.Namespace).Apply(ctx, a, opts)
	case *appsv1ac.StatefulSetApplyConfiguration:
		return c.AppsV1().StatefulSets(*a.Namespace).Apply(ctx, a, opts)
	case *appsv1ac.DaemonSetApplyConfiguration:
		return c.AppsV1().DaemonSets(*a.Namespace).Apply(ctx, a, opts)
	}
	return nil, fmt.Errorf("apply: unsupported apply configuration %T", ac)
}

// extract is what manager applied to obj before: applying it again restores
// the manager's fields as they were (none, if it never applied).
func extract(obj runtime.Object, manager string) (any, error) {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return appsv1ac.ExtractDeployment(o, manager)
	case *appsv1.StatefulSet:
		return appsv1ac.ExtractStatefulSet(o, manager)
	case *appsv1.DaemonSet:
		return appsv1ac.ExtractDaemonSet(o, manager)
	}
	return nil, fmt.Errorf("extract: unsupported object %T", obj)
}

// Rejection is one change a dry-run refused.
type Rejection struct {
	Workload string `json:"workload"`
	Reason   string `json:"reason"`
}

// dryRunWorkers bounds the dry-runs in flight: the API server answers each
// in about 10 ms, so one at a time would take 10 s per thousand workloads.
const dryRunWorkers = 8

// DryRun sends every change as a server-side dry-run (validation, defaulting,
// admission webhooks and policies, quota), a few at a time, and passes each
// object the server would store to each (if not nil; called concurrently,
// once per index). If any is refused it returns every refusal, in order,
// wrapped in ErrRejected, and nothing has been changed.
func (r *Roller) DryRun(ctx context.Context, changes []plan.Change, each func(i int, obj runtime.Object)) error {
	errs := make([]error, len(changes))
	sem := make(chan struct{}, dryRunWorkers)
	var wg sync.WaitGroup
	for i, ch := range changes {
		if ch.Skip != "" {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			obj, err := r.Apply(ctx, ch, true)
			if err == nil {
				// The workload's template as the server would store it, as
				// a pod: Pod Security, quota, pod webhooks.
				err = r.dryRunPod(ctx, ch.Workload, obj)
			} else {
				err = verdict(ch.Workload.String(), lower(ch.Workload.Kind())+"s", err)
			}
			switch {
			case err != nil:
				errs[i] = err
			case ch.Check != nil && ch.Check(workload.Template(obj)) != nil:
				errs[i] = fmt.Errorf("%w: %s: %v", ErrRejected, ch.Workload, ch.Check(workload.Template(obj)))
			case each != nil:
				each(i, obj)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, ErrRejected) {
			return err // not a verdict on the plan: say what failed
		}
	}
	return errors.Join(errs...)
}

// Roll applies one change and waits until the workload is rolled out and
// healthy. The same apply records, on the workload, the manager's intent
// before it (see Converge). On failure or timeout it applies that previous
// intent under the same manager (rollback), waits for the workload to be
// healthy again, and returns an error wrapping ErrRolledBack, or
// ErrRollbackFailed naming what needs attention. progress receives the
// rollout's state as it changes.
func (r *Roller) Roll(ctx context.Context, ch plan.Change, progress func(string)) error {
	w := ch.Workload
	manager := plan.FieldManager(ch.ID)
	before, err := r.Cache.Get(w.Kind(), w.Name())
	if err != nil {
		return fmt.Errorf("read %s: %w", w, err)
	}
	prev, err := extract(before, manager)
	if err != nil {
		return fmt.Errorf("read %s's previous state: %w", w, err)
	}
	rec, err := recordPrevious(prev, ch.ID)
	if err != nil {
		return fmt.Errorf("record %s's previous state: %w", w, err)
	}
	ac, err := withAnnotation(ch.Apply, PreviousAnnotation(ch.ID), rec)
	if err != nil {
		return fmt.Errorf("apply %s: %w", w, err)
	}
	obj, err := apply(ctx, r.Client, ac, manager, false)
	if err != nil {
		return fmt.Errorf("apply %s: %w", w, err)
	}
	if ch.Hash != "" {
		r.note(obj, plan.HashAnnotation(ch.ID))
	} else {
		r.note(obj)
	}
	gen := workload.New(obj).Meta().GetGeneration()
	waitErr := r.rollOut(ctx, w, gen, progress)
	if waitErr == nil {
		waitErr = r.steady(ctx, w, carriesChange(ch), progress)
	}
	if waitErr == nil {
		return nil
	}
	if ctx.Err() != nil || errors.Is(waitErr, ErrUnreachable) {
		// Interrupted or cut off, not failed: leave the rollout to a rerun,
		// which waits for it or rolls it back.
		return fmt.Errorf("%s: interrupted while rolling out; rerun to converge: %w", w, waitErr)
	}
	r.Log.Warn("rollout failed; rolling back", "kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "error", waitErr)
	return r.rollback(context.WithoutCancel(ctx), w, prev, manager, workload.New(obj).Meta().GetManagedFields(), waitErr, progress)
}

// settle waits, after a rollback, for the workload to be healthy again. A
// StatefulSet does not replace pods of a broken revision by itself (they
// never become Ready, and it waits for them): delete those.
func (r *Roller) settle(ctx context.Context, w workload.Workload, gen int64, progress func(string), badRevisions ...string) error {
	ctx, cancel := context.WithTimeoutCause(ctx, r.Timeout, fmt.Errorf("%w: not healthy again within %s (--timeout)", ErrFailed, r.Timeout))
	defer cancel()
	obj, err := r.Cache.Observed(ctx, w.Kind(), w.Name(), gen)
	if err != nil {
		return err
	}
	if sts, ok := obj.(*appsv1.StatefulSet); ok {
		for _, rev := range badRevisions {
			if rev == "" || rev == sts.Status.UpdateRevision {
				continue
			}
			if err := r.deleteRevision(ctx, sts, rev); err != nil {
				return err
			}
		}
	}
	return r.rollOut(ctx, w, gen, progress)
}

func badRevision(obj runtime.Object) string {
	if sts, ok := obj.(*appsv1.StatefulSet); ok {
		return sts.Status.UpdateRevision
	}
	return ""
}

// rollOut waits, within r.Timeout, until the workload's generation gen is
// rolled out; a StatefulSet with the OnDelete strategy is rolled pod by pod.
func (r *Roller) rollOut(ctx context.Context, w workload.Workload, gen int64, progress func(string)) error {
	ctx, cancel := context.WithTimeoutCause(ctx, r.Timeout, fmt.Errorf("%w: not rolled out within %s (--timeout)", ErrFailed, r.Timeout))
	defer cancel()
	if err := r.Cache.Sync(ctx, w.Kind(), w.Name(), gen); err != nil {
		return err
	}
	if obj, _ := r.Cache.Get(w.Kind(), w.Name()); obj != nil {
		if sts, ok := obj.(*appsv1.StatefulSet); ok && sts.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType {
			if err := r.rollOnDelete(ctx, w, gen, progress); err != nil {
				return err
			}
		}
		if ds, ok := obj.(*appsv1.DaemonSet); ok && ds.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType {
			if err := r.rollOnDeleteDaemonSet(ctx, w, gen, progress); err != nil {
				return err
			}
		}
	}
	return r.wait(ctx, w, gen, progress)
}

// wait follows the workload in the cache until Status says done.
func (r *Roller) wait(ctx context.Context, w workload.Workload, gen int64, progress func(string)) error {
	changed, stop := r.Cache.Subscribe(w.Kind(), w.Name())
	defer stop()
	last := ""
	for {
		obj, err := r.Cache.Get(w.Kind(), w.Name())
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("%w: %s was deleted while rolling out", ErrFailed, w)
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", w, err)
		}
		if workload.New(obj).Meta().GetGeneration() >= gen {
			written := r.writtenObj(w)
			if err := carries(obj, written); err != nil {
				return err
			}
			msg, done, err := StatusSince(obj, written.obj)
			if err != nil {
				return err
			}
			if msg != last && progress != nil {
				progress(msg)
			}
			last = msg
			if done {
				return nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			if err := r.reachable(context.WithoutCancel(ctx), w); err != nil {
				return fmt.Errorf("%w while waiting for %s: %v", ErrUnreachable, w, err)
			}
			if last != "" {
				return fmt.Errorf("%w (last state: %s)", context.Cause(ctx), last)
			}
			return context.Cause(ctx)
		}
	}
}

// reachable asks the API server for the workload once: a watch that has
// gone quiet may mean a stuck rollout, or a cut connection (which the
// reflector retries silently). Only a transport error counts as cut off:
// any answer of the API server, a 403 included, proves it reachable, so the
// Job's Role needs no get on workloads for this.
func (r *Roller) reachable(ctx context.Context, w workload.Workload) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var err error
	apps := r.Client.AppsV1()
	switch w.Kind() {
	case workload.Deployment:
		_, err = apps.Deployments(w.Namespace()).Get(ctx, w.Name(), metav1.GetOptions{})
	case workload.StatefulSet:
		_, err = apps.StatefulSets(w.Namespace()).Get(ctx, w.Name(), metav1.GetOptions{})
	case workload.DaemonSet:
		_, err = apps.DaemonSets(w.Namespace()).Get(ctx, w.Name(), metav1.GetOptions{})
	}
	var status apierrors.APIStatus
	if err == nil || errors.As(err, &status) {
		return nil
	}
	return err
}

func lower(k workload.Kind) string {
	switch k {
	case workload.Deployment:
		return "deployment"
	case workload.StatefulSet:
		return "statefulset"
	}
	return "daemonset"
}
