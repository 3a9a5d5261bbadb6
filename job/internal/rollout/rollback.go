package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"

	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// ErrNotOurs: a rerun found a workload unhealthy, or rolling out, for a
// reason this Job did not cause; it was reported and left alone (exit 8).
var ErrNotOurs = errors.New("unhealthy, not by this Job")

// PreviousAnnotation names the record, on the workload object, of the
// injection id's intent before the Job's last write.
func PreviousAnnotation(id string) string { return wellknown.AnnotationPreviousPrefix + id }

// Writer is another field manager's write to a workload's pod template.
type Writer struct {
	Manager   string
	Operation string
	Time      string
	// Fields are the first few pod template fields the manager owns.
	Fields []string
	More   int
}

func (w Writer) String() string {
	s := fmt.Sprintf("%s (%s", w.Manager, w.Operation)
	if w.Time != "" {
		s += " at " + w.Time
	}
	s += ")"
	if len(w.Fields) > 0 {
		s += " owning " + strings.Join(w.Fields, ", ")
		if w.More > 0 {
			s += fmt.Sprintf(" and %d more", w.More)
		}
	}
	return s
}

func writers(ws []Writer) string {
	s := make([]string, len(ws))
	for i, w := range ws {
		s[i] = w.String()
	}
	return strings.Join(s, "; ")
}

// othersError carries, with a rollback's outcome, the other managers that
// changed the pod template while the Job waited.
type othersError struct {
	err     error
	writers []Writer
}

func (e *othersError) Error() string { return e.err.Error() }
func (e *othersError) Unwrap() error { return e.err }

// ChangedBy returns the other field managers that changed the workload's pod
// template while the Job waited for the rollout err reports: their changes
// were left in place.
func ChangedBy(err error) []Writer {
	var o *othersError
	if errors.As(err, &o) {
		return o.writers
	}
	return nil
}

// recordPrevious is the annotation value recording prev, the manager's
// intent before this run's write, without the record it held itself.
func recordPrevious(prev any, id string) (string, error) {
	b, err := json.Marshal(prev)
	if err != nil {
		return "", err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return "", err
	}
	if md, ok := m["metadata"].(map[string]any); ok {
		if a, ok := md["annotations"].(map[string]any); ok {
			delete(a, PreviousAnnotation(id))
			if len(a) == 0 {
				delete(md, "annotations")
			}
		}
	}
	b, err = json.Marshal(m)
	return string(b), err
}

// previousOf reads the record of the intent before the Job's last write to
// obj; ok is false when there is none.
func previousOf(obj runtime.Object, id string) (prev any, ok bool, err error) {
	v, ok := workload.New(obj).Meta().GetAnnotations()[PreviousAnnotation(id)]
	if !ok {
		return nil, false, nil
	}
	prev, err = emptyIntent(obj)
	if err != nil {
		return nil, false, err
	}
	if err := json.Unmarshal([]byte(v), prev); err != nil {
		return nil, false, fmt.Errorf("annotation %s: %w", PreviousAnnotation(id), err)
	}
	return prev, true, nil
}

// emptyIntent is the bare apply configuration of obj's kind and name.
func emptyIntent(obj runtime.Object) (any, error) {
	m := workload.New(obj).Meta()
	switch obj.(type) {
	case *appsv1.Deployment:
		return appsv1ac.Deployment(m.GetName(), m.GetNamespace()), nil
	case *appsv1.StatefulSet:
		return appsv1ac.StatefulSet(m.GetName(), m.GetNamespace()), nil
	case *appsv1.DaemonSet:
		return appsv1ac.DaemonSet(m.GetName(), m.GetNamespace()), nil
	}
	return nil, fmt.Errorf("unsupported object %T", obj)
}

// withAnnotation returns a copy of the apply configuration ac with the
// workload annotation key=value added.
func withAnnotation(ac any, key, value string) (any, error) {
	b, err := json.Marshal(ac)
	if err != nil {
		return nil, err
	}
	switch ac.(type) {
	case *appsv1ac.DeploymentApplyConfiguration:
		c := &appsv1ac.DeploymentApplyConfiguration{}
		err = json.Unmarshal(b, c)
		c.WithAnnotations(map[string]string{key: value})
		return c, err
	case *appsv1ac.StatefulSetApplyConfiguration:
		c := &appsv1ac.StatefulSetApplyConfiguration{}
		err = json.Unmarshal(b, c)
		c.WithAnnotations(map[string]string{key: value})
		return c, err
	case *appsv1ac.DaemonSetApplyConfiguration:
		c := &appsv1ac.DaemonSetApplyConfiguration{}
		err = json.Unmarshal(b, c)
		c.WithAnnotations(map[string]string{key: value})
		return c, err
	}
	return nil, fmt.Errorf("unsupported apply configuration %T", ac)
}

// templateFields lists the pod template fields an entry owns, as paths
// (spec.template.spec.containers[name=app].image); nil if it owns none.
func templateFields(e metav1.ManagedFieldsEntry) []string {
	if e.FieldsV1 == nil {
		return nil
	}
	var root map[string]json.RawMessage
	if json.Unmarshal(e.FieldsV1.Raw, &root) != nil {
		return nil
	}
	var spec map[string]json.RawMessage
	if json.Unmarshal(root["f:spec"], &spec) != nil {
		return nil
	}
	t, ok := spec["f:template"]
	if !ok {
		return nil
	}
	var out []string
	leaves("spec.template", t, &out)
	sort.Strings(out)
	return out
}

func leaves(path string, raw json.RawMessage, out *[]string) {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil || len(m) == 0 {
		*out = append(*out, path)
		return
	}
	n := 0
	for k, v := range m {
		switch {
		case k == ".":
			continue
		case strings.HasPrefix(k, "f:"):
			leaves(path+"."+k[2:], v, out)
		case strings.HasPrefix(k, "k:"):
			var key map[string]any
			_ = json.Unmarshal([]byte(k[2:]), &key)
			var parts []string
			for kk, vv := range key {
				parts = append(parts, fmt.Sprintf("%s=%v", kk, vv))
			}
			sort.Strings(parts)
			leaves(path+"["+strings.Join(parts, ",")+"]", v, out)
		case strings.HasPrefix(k, "v:"):
			leaves(path+"["+k[2:]+"]", v, out)
		case strings.HasPrefix(k, "i:"):
			leaves(path+"["+k[2:]+"]", v, out)
		default:
			continue
		}
		n++
	}
	if n == 0 {
		*out = append(*out, path)
	}
}

const maxFields = 4

func writerOf(e metav1.ManagedFieldsEntry, fields []string) Writer {
	w := Writer{Manager: e.Manager, Operation: string(e.Operation)}
	if e.Time != nil {
		w.Time = e.Time.UTC().Format("15:04:05Z")
	}
	w.Fields = fields
	if len(fields) > maxFields {
		w.Fields, w.More = fields[:maxFields], len(fields)-maxFields
	}
	return w
}

func entryKey(e metav1.ManagedFieldsEntry) string {
	return e.Manager + "\x00" + string(e.Operation) + "\x00" + e.Subresource
}

// changedWriters lists the managers other than ours whose pod template
// fields are new or changed in now compared with base: who wrote the
// template since base was read.
func changedWriters(base, now []metav1.ManagedFieldsEntry, manager string) []Writer {
	old := map[string]metav1.ManagedFieldsEntry{}
	for _, e := range base {
		old[entryKey(e)] = e
	}
	var out []Writer
	for _, e := range now {
		if e.Manager == manager || e.Subresource != "" {
			continue
		}
		fields := templateFields(e)
		if len(fields) == 0 {
			continue
		}
		// Unchanged: the same write (same time) owning the same template
		// fields. A later time means another write, which may have changed
		// the value of a field it already owned (a second set image).
		if o, ok := old[entryKey(e)]; ok && o.Time.Equal(e.Time) && slices.Equal(templateFields(o), fields) {
			continue
		}
		out = append(out, writerOf(e, fields))
	}
	return out
}

// laterWriters lists the managers other than ours that wrote pod template
// fields strictly after our manager's last write (managedFields times have
// one-second resolution: a write within the same second counts as ours).
func laterWriters(entries []metav1.ManagedFieldsEntry, manager string) (ours *metav1.Time, later []Writer) {
	var t *metav1.Time
	for _, e := range entries {
		if e.Manager == manager && e.Operation == metav1.ManagedFieldsOperationApply && e.Subresource == "" {
			t = e.Time
		}
	}
	if t == nil {
		return nil, nil
	}
	for _, e := range entries {
		if e.Manager == manager || e.Subresource != "" || e.Time == nil || !e.Time.After(t.Time) {
			continue
		}
		if fields := templateFields(e); len(fields) > 0 {
			later = append(later, writerOf(e, fields))
		}
	}
	return t, later
}

// notStartedByUs says why the unfinished rollout of obj is not one this
// Job's manager started, or "" if it is.
func notStartedByUs(obj runtime.Object, manager string, recorded bool) string {
	m := workload.New(obj).Meta()
	ours, later := laterWriters(m.GetManagedFields(), manager)
	switch {
	case ours == nil:
		return fmt.Sprintf("field manager %s never applied to it", manager)
	case len(later) > 0:
		return "its pod template was changed after this Job's write by " + writers(later)
	case !recorded:
		return "it has no record of a rollout by this Job (annotation " + wellknown.AnnotationPreviousPrefix + "<id>)"
	}
	gen := m.GetGeneration()
	switch o := obj.(type) {
	case *appsv1.Deployment:
		// A rollout back to an existing ReplicaSet leaves the previous
		// NewReplicaSetAvailable in place (the controller does not touch a
		// condition whose reason stays): only one set at or after our
		// write (one-second resolution: the same second counts, so a doubt
		// leaves the workload alone) tells that our rollout completed.
		if o.Status.ObservedGeneration == gen {
			for _, c := range o.Status.Conditions {
				if c.Type == appsv1.DeploymentProgressing && c.Reason == "NewReplicaSetAvailable" && !c.LastUpdateTime.Before(ours) {
					return "its rollout of this pod template completed; it became unhealthy since"
				}
			}
		}
	case *appsv1.StatefulSet:
		if o.Status.ObservedGeneration == gen && o.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType &&
			o.Status.CurrentRevision != "" && o.Status.CurrentRevision == o.Status.UpdateRevision {
			return "its rollout of this pod template completed; it became unhealthy since"
		}
	}
	return ""
}

// Converge finishes, on a rerun, the rollout that an interrupted run of the
// Job started for ch (a change the plan found already made: injected with
// the same hash, or already removed): it waits for it and, if it fails,
// rolls back to the intent recorded before that run's write (the previous
// injection, or none), exactly as Roll would have. A rollout that this Job
// did not start (another manager changed the pod template since, or it had
// completed and the workload became unhealthy since) is not waited for nor
// touched: Converge returns an error wrapping ErrNotOurs.
func (r *Roller) Converge(ctx context.Context, ch plan.Change, progress func(string)) (waited bool, err error) {
	w := ch.Workload
	manager := plan.FieldManager(ch.ID)
	obj, err := r.Cache.Get(w.Kind(), w.Name())
	if err != nil {
		return false, fmt.Errorf("read %s: %w", w, err)
	}
	msg, done, statusErr := Status(obj)
	if done && statusErr == nil {
		return false, nil
	}
	prev, recorded, err := previousOf(obj, ch.ID)
	if err != nil {
		return false, fmt.Errorf("read %s's record: %w", w, err)
	}
	_, injected := workload.Template(obj).Annotations[plan.SecretAnnotation(ch.ID)]
	if !recorded && !injected {
		return false, nil // never touched by this injection: nothing to converge
	}
	if why := notStartedByUs(obj, manager, recorded); why != "" {
		state := msg
		if statusErr != nil {
			state = statusErr.Error()
		}
		return false, fmt.Errorf("%w: %s is not healthy (%s), but not because of this Job: %s; nothing was changed: fix or finish that change, then rerun",
			ErrNotOurs, w, state, why)
	}
	if !recorded {
		if prev, err = emptyIntent(obj); err != nil {
			return false, err
		}
	}
	base := workload.New(obj).Meta().GetManagedFields()
	gen := workload.New(obj).Meta().GetGeneration()
	waitErr := r.rollOut(ctx, w, gen, progress)
	if waitErr == nil || ctx.Err() != nil || errors.Is(waitErr, ErrUnreachable) {
		return true, waitErr
	}
	r.Log.Warn("unfinished rollout started by this Job failed; rolling back to the intent recorded before it", "kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "error", waitErr)
	return true, r.rollback(context.WithoutCancel(ctx), w, prev, manager, base, waitErr, progress)
}

// rollback applies prev, the manager's intent before this run's write (an
// empty one after a first injection), under the manager, and nothing else:
// no Update of the whole template, no Force, so fields of other managers,
// whatever they wrote during the wait, stay as they are and stay theirs.
// base is the workload's managedFields right after this run's write: who
// wrote the pod template since is named in the result (and kept). It
// returns an error wrapping ErrRolledBack, or ErrRollbackFailed saying what
// is left and what to do.
func (r *Roller) rollback(ctx context.Context, w workload.Workload, prev any, manager string, base []metav1.ManagedFieldsEntry, cause error, progress func(string)) error {
	// The informer's copy: its watch has the other managers' writes of the
	// wait (and the Role needs no get on workloads).
	bad, err := r.Cache.Get(w.Kind(), w.Name())
	if err != nil {
		bad = nil
	}
	var others []Writer
	if bad != nil {
		others = changedWriters(base, workload.New(bad).Meta().GetManagedFields(), manager)
	}
	kept := ""
	if len(others) > 0 {
		kept = "; changed by other managers during the wait, and left in place: " + writers(others)
	}
	restored, err := apply(ctx, r.Client, prev, manager, false)
	if err != nil {
		advice := fmt.Sprintf("no one else changed its pod template since this run's write, so kubectl rollout undo %s/%s -n %s restores the template from before the run",
			lower(w.Kind()), w.Name(), w.Namespace())
		what := "refused"
		if len(others) > 0 {
			advice = fmt.Sprintf("do not run kubectl rollout undo: it would also revert those changes; fix what refused the write, then run k8secrets-job remove (or rerun the previous inject) for this Secret, or remove the fields of field manager %s by hand", manager)
		}
		if apierrors.IsConflict(err) {
			what = "in conflict with another manager's fields"
			advice = "do not run kubectl rollout undo: it would also revert their change; the conflicting fields are theirs now: either rerun the inject with flags that match their values, or have them revert their change and rerun the previous inject"
		}
		return &othersError{writers: others, err: fmt.Errorf("%w: %s: rollout failed (%v); restoring this run's previous fields (server-side apply under %s, no force) was %s: %v; the workload still carries this run's change%s; %s",
			ErrRollbackFailed, w, cause, manager, what, err, kept, advice)}
	}
	// Conditions older than this write (a ProgressDeadlineExceeded left by
	// the failed rollout) say nothing about the rollback.
	r.note(restored)
	if err := r.settle(ctx, w, workload.New(restored).Meta().GetGeneration(), progress, badRevision(bad)); err != nil {
		return &othersError{writers: others, err: fmt.Errorf("%w: %s: rollout failed (%v); this run's previous fields are restored%s, but the workload is not healthy again: %v; check its pods (do not run kubectl rollout undo: its previous revision is the failed one)",
			ErrRollbackFailed, w, cause, kept, err)}
	}
	return &othersError{writers: others, err: fmt.Errorf("%w: %s: %v; this run's fields are back to what they were before it%s, and its pods are healthy",
		ErrRolledBack, w, cause, kept)}
}
