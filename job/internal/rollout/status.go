package rollout

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Status reports a workload's rollout state from its object alone, as
// kubectl's rollout status does: a message, whether the rollout is complete
// and healthy, and an error wrapping ErrFailed when it can no longer
// complete by itself.
func Status(obj runtime.Object) (msg string, done bool, err error) {
	return StatusSince(obj, nil)
}

// StatusSince is Status judged from the write that returned written (nil:
// any state counts): a failure condition of a Deployment already present,
// unchanged, in written is stale (a ProgressDeadlineExceeded left over from
// before a rollback to an existing ReplicaSet, which the controller keeps
// until it sees progress) and does not fail the rollout. Conditions are
// compared as recorded by the controller, never against a local clock.
func StatusSince(obj, written runtime.Object) (msg string, done bool, err error) {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		var base []appsv1.DeploymentCondition
		if w, ok := written.(*appsv1.Deployment); ok {
			base = w.Status.Conditions
		}
		return deploymentStatus(o, base)
	case *appsv1.StatefulSet:
		return statefulSetStatus(o)
	case *appsv1.DaemonSet:
		return daemonSetStatus(o)
	}
	return "", false, fmt.Errorf("rollout status of %T is not supported", obj)
}

func replicas(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

func deploymentStatus(d *appsv1.Deployment, base []appsv1.DeploymentCondition) (string, bool, error) {
	if d.Generation > d.Status.ObservedGeneration {
		return "waiting for the deployment controller to observe the change", false, nil
	}
	for _, c := range d.Status.Conditions {
		if !fresh(c, base) {
			continue
		}
		switch {
		case c.Type == appsv1.DeploymentProgressing && c.Reason == "ProgressDeadlineExceeded":
			return "", false, fmt.Errorf("%w: deployment %s/%s exceeded its progress deadline: %s", ErrFailed, d.Namespace, d.Name, c.Message)
		case c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue:
			// Its ReplicaSet cannot create pods (quota, LimitRange, Pod
			// Security, a webhook): waiting for --timeout would change nothing.
			return "", false, fmt.Errorf("%w: deployment %s/%s cannot create pods (%s: %s): %s", ErrFailed, d.Namespace, d.Name, c.Type, c.Reason, c.Message)
		}
	}
	want := replicas(d.Spec.Replicas)
	s := d.Status
	switch {
	case s.UpdatedReplicas < want:
		return fmt.Sprintf("%d of %d new replicas updated", s.UpdatedReplicas, want), false, nil
	case s.Replicas > s.UpdatedReplicas:
		return fmt.Sprintf("%d old replicas pending termination", s.Replicas-s.UpdatedReplicas), false, nil
	case s.AvailableReplicas < s.UpdatedReplicas:
		return fmt.Sprintf("%d of %d updated replicas available", s.AvailableReplicas, s.UpdatedReplicas), false, nil
	}
	return fmt.Sprintf("rolled out: %d of %d replicas updated and available", s.AvailableReplicas, want), true, nil
}

// fresh tells whether c is not, unchanged, one of the conditions in base.
func fresh(c appsv1.DeploymentCondition, base []appsv1.DeploymentCondition) bool {
	for _, b := range base {
		if b.Type == c.Type && b.Status == c.Status && b.Reason == c.Reason && b.Message == c.Message &&
			b.LastUpdateTime.Equal(&c.LastUpdateTime) && b.LastTransitionTime.Equal(&c.LastTransitionTime) {
			return false
		}
	}
	return true
}

func statefulSetStatus(s *appsv1.StatefulSet) (string, bool, error) {
	if s.Status.ObservedGeneration == 0 || s.Generation > s.Status.ObservedGeneration {
		return "waiting for the statefulset controller to observe the change", false, nil
	}
	want := replicas(s.Spec.Replicas)
	st := s.Status
	if st.ReadyReplicas < want {
		return fmt.Sprintf("%d of %d pods ready", st.ReadyReplicas, want), false, nil
	}
	if s.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType {
		// The controller moves currentRevision only for RollingUpdate: count
		// updated pods instead.
		if st.UpdatedReplicas < want {
			return fmt.Sprintf("%d of %d pods at revision %s", st.UpdatedReplicas, want, st.UpdateRevision), false, nil
		}
		return fmt.Sprintf("rolled out: %d of %d pods ready at revision %s", st.ReadyReplicas, want, st.UpdateRevision), true, nil
	}
	if ru := s.Spec.UpdateStrategy.RollingUpdate; ru != nil && ru.Partition != nil && *ru.Partition > 0 {
		if st.UpdatedReplicas < want-*ru.Partition {
			return fmt.Sprintf("%d of %d pods at revision %s (partition %d)", st.UpdatedReplicas, want-*ru.Partition, st.UpdateRevision, *ru.Partition), false, nil
		}
		return fmt.Sprintf("rolled out: %d pods at revision %s (partition %d)", st.UpdatedReplicas, st.UpdateRevision, *ru.Partition), true, nil
	}
	if st.UpdateRevision != st.CurrentRevision {
		return fmt.Sprintf("%d of %d pods at revision %s", st.UpdatedReplicas, want, st.UpdateRevision), false, nil
	}
	return fmt.Sprintf("rolled out: %d of %d pods ready at revision %s", st.ReadyReplicas, want, st.CurrentRevision), true, nil
}

func daemonSetStatus(d *appsv1.DaemonSet) (string, bool, error) {
	if d.Generation > d.Status.ObservedGeneration {
		return "waiting for the daemonset controller to observe the change", false, nil
	}
	s := d.Status
	switch {
	case s.UpdatedNumberScheduled < s.DesiredNumberScheduled:
		return fmt.Sprintf("%d of %d pods updated", s.UpdatedNumberScheduled, s.DesiredNumberScheduled), false, nil
	case s.NumberAvailable < s.DesiredNumberScheduled:
		return fmt.Sprintf("%d of %d updated pods available", s.NumberAvailable, s.DesiredNumberScheduled), false, nil
	}
	return fmt.Sprintf("rolled out: %d of %d pods updated and available", s.NumberAvailable, s.DesiredNumberScheduled), true, nil
}
