package rollout

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// ErrRefused: a workload whose rollout the Job could not honestly follow
// (a paused Deployment, a partition that holds back every pod) is refused
// before any write (exit 4).
var ErrRefused = errors.New("refused before any write")

// Verdict is what Preflight decided for one workload about to be written.
type Verdict struct {
	// Skip, when set, says why the workload is left alone (not an error).
	Skip string
	// Notes are what the report should say about how it is rolled out.
	Notes []string
}

// Preflight looks at a workload the Job is about to change, before any
// write, and answers each case where "rolled out" would otherwise not mean
// "its pods carry the change". inject is false for a removal, which undoes
// only the Job's own fields and so also goes ahead on an owned workload.
// A refusal wraps ErrRefused and names the fix.
func Preflight(obj runtime.Object, inject bool) (Verdict, error) {
	var v Verdict
	w := workload.New(obj)
	if ref := metav1.GetControllerOf(w.Meta()); ref != nil && inject {
		v.Skip = fmt.Sprintf("owned by %s %s (%s), which would revert its pod template: not injected; inject through the owner's spec instead",
			ref.Kind, ref.Name, ref.APIVersion)
		return v, nil
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		if o.Spec.Paused {
			return v, fmt.Errorf("%w: %s is paused: its pods would not take the change, and the rollout would be rolled back after --timeout; resume it (kubectl rollout resume deployment/%s -n %s) and rerun",
				ErrRefused, w, o.Name, o.Namespace)
		}
	case *appsv1.StatefulSet:
		s := o.Spec.UpdateStrategy
		if s.Type == appsv1.OnDeleteStatefulSetStrategyType {
			if n := replicas(o.Spec.Replicas); o.Status.ReadyReplicas < n {
				return v, fmt.Errorf("%w: %s has %d of %d pods Ready: with updateStrategy OnDelete the Job replaces pods itself and never while another is unready; make them Ready and rerun",
					ErrRefused, w, o.Status.ReadyReplicas, n)
			}
			v.Notes = append(v.Notes, "updateStrategy OnDelete: the Job replaces the pods itself, one at a time, through the Eviction API (PodDisruptionBudgets hold)")
			break
		}
		if s.RollingUpdate == nil || s.RollingUpdate.Partition == nil || *s.RollingUpdate.Partition <= 0 {
			break
		}
		p, n := *s.RollingUpdate.Partition, replicas(o.Spec.Replicas)
		if p >= n {
			return v, fmt.Errorf("%w: %s has partition %d with %d replicas: no pod would take the change; lower spec.updateStrategy.rollingUpdate.partition below %d and rerun",
				ErrRefused, w, p, n, n)
		}
		v.Notes = append(v.Notes, fmt.Sprintf("partition %d: only the %d pods with ordinal %d or more take the change; the other %d keep the previous template until the partition is lowered",
			p, n-p, p, p))
	case *appsv1.DaemonSet:
		if o.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType {
			if st := o.Status; st.NumberReady < st.DesiredNumberScheduled {
				return v, fmt.Errorf("%w: %s has %d of %d pods Ready: with updateStrategy OnDelete the Job replaces pods itself and never while another is unready; make them Ready and rerun",
					ErrRefused, w, st.NumberReady, st.DesiredNumberScheduled)
			}
			v.Notes = append(v.Notes, "updateStrategy OnDelete: the Job replaces the pods itself, one at a time, through the Eviction API (PodDisruptionBudgets hold)")
		}
	}
	return v, nil
}

// dryRunPod sends a Pod made from obj's pod template as a server-side
// dry-run create in its namespace: what only a pod's creation meets (Pod
// Security enforce, ResourceQuota, LimitRange, pod webhooks and policies)
// is refused here, before any write, not by the ReplicaSet after it.
func (r *Roller) dryRunPod(ctx context.Context, w workload.Workload, obj runtime.Object) error {
	t := workload.Template(obj)
	prefix := w.Name()
	if len(prefix) > 40 {
		prefix = prefix[:40]
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: prefix + "-k8secrets-dry-run-",
			Namespace:    w.Namespace(),
			Labels:       t.Labels,
			Annotations:  t.Annotations,
		},
		Spec: *t.Spec.DeepCopy(),
	}
	_, err := r.Client.CoreV1().Pods(w.Namespace()).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err == nil {
		return nil
	}
	if isQuota(err) && !surges(obj) {
		// The workload replaces a pod before it creates one: a quota that is
		// full now may still hold the rollout. Its progress is watched.
		r.Log.Warn("a pod of the new template exceeds a ResourceQuota now; the workload replaces pods one by one, so going ahead",
			"kind", w.Kind(), "namespace", w.Namespace(), "name", w.Name(), "error", err)
		return nil
	}
	return verdict(fmt.Sprintf("a pod of %s", w), "pods", err)
}

// verdict sorts a dry-run's error: an admission or validation denial is a
// verdict on the change (ErrRejected, exit 4); an RBAC refusal names the
// missing verb; 5xx, 429, timeouts and a webhook that cannot be called are
// not verdicts (exit 1: retry).
func verdict(what, resource string, err error) error {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return fmt.Errorf("dry-run %s: %w", what, err)
	}
	code := status.Status().Code
	switch {
	case apierrors.IsForbidden(err) && rbacDenial.MatchString(err.Error()):
		verb := "create"
		if m := rbacDenial.FindStringSubmatch(err.Error()); m != nil {
			verb = m[1]
		}
		return fmt.Errorf("dry-run %s: %w; grant verb %q on %s to this identity (a server-side dry-run needs the verb of the real write; the Role in manifests/base lists what the Job needs)",
			what, err, verb, resource)
	case code >= http.StatusInternalServerError, code == http.StatusTooManyRequests, code == http.StatusRequestTimeout,
		apierrors.IsTimeout(err), apierrors.IsServerTimeout(err), apierrors.IsTooManyRequests(err),
		apierrors.IsInternalError(err), apierrors.IsServiceUnavailable(err):
		return fmt.Errorf("dry-run %s: %w; not a verdict on the change (the API server or a webhook failed): nothing was changed, retry", what, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrRejected, what, err)
}

// rbacDenial matches the authorizer's refusal ("User "x" cannot create
// resource "pods" ..."), as opposed to an admission denial, which is also
// 403 Forbidden.
var rbacDenial = regexp.MustCompile(`cannot ([a-z]+) resource "`)

func isQuota(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "exceeded quota")
}

// surges tells whether the workload creates a new pod before it removes an
// old one: a Deployment's RollingUpdate with maxSurge above zero.
func surges(obj runtime.Object) bool {
	d, ok := obj.(*appsv1.Deployment)
	if !ok || d.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType {
		return false
	}
	surge := intstr.FromString("25%")
	if ru := d.Spec.Strategy.RollingUpdate; ru != nil && ru.MaxSurge != nil {
		surge = *ru.MaxSurge
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(&surge, int(replicas(d.Spec.Replicas)), true)
	return err != nil || n > 0
}
