package rollout

import (
	"errors"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
)

func deploy(gen, observed int64, replicas int32, st appsv1.DeploymentStatus) *appsv1.Deployment {
	st.ObservedGeneration = observed
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", Generation: gen},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(replicas)}, Status: st}
}

func sts(gen, observed int64, replicas int32, strategy appsv1.StatefulSetUpdateStrategy, st appsv1.StatefulSetStatus) *appsv1.StatefulSet {
	st.ObservedGeneration = observed
	return &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", Generation: gen},
		Spec: appsv1.StatefulSetSpec{Replicas: ptr.To(replicas), UpdateStrategy: strategy}, Status: st}
}

func ds(gen, observed int64, strategy appsv1.DaemonSetUpdateStrategyType, st appsv1.DaemonSetStatus) *appsv1.DaemonSet {
	st.ObservedGeneration = observed
	return &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "ns", Generation: gen},
		Spec: appsv1.DaemonSetSpec{UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: strategy}}, Status: st}
}

func TestStatus(t *testing.T) {
	rolling := appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType}
	onDelete := appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}
	partition := appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType,
		RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{Partition: ptr.To(int32(2))}}
	for _, tc := range []struct {
		name   string
		obj    runtime.Object
		done   bool
		failed bool
	}{
		{"deployment not observed", deploy(2, 1, 3, appsv1.DeploymentStatus{Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 3}), false, false},
		{"deployment updating", deploy(2, 2, 3, appsv1.DeploymentStatus{Replicas: 4, UpdatedReplicas: 1, AvailableReplicas: 3}), false, false},
		{"deployment old pending", deploy(2, 2, 3, appsv1.DeploymentStatus{Replicas: 4, UpdatedReplicas: 3, AvailableReplicas: 3}), false, false},
		{"deployment unavailable", deploy(2, 2, 3, appsv1.DeploymentStatus{Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 2}), false, false},
		{"deployment done", deploy(2, 2, 3, appsv1.DeploymentStatus{Replicas: 3, UpdatedReplicas: 3, AvailableReplicas: 3}), true, false},
		{"deployment deadline", deploy(2, 2, 3, appsv1.DeploymentStatus{Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Reason: "ProgressDeadlineExceeded"}}}), false, true},
		{"statefulset not observed", sts(2, 1, 2, rolling, appsv1.StatefulSetStatus{ReadyReplicas: 2}), false, false},
		{"statefulset not ready", sts(2, 2, 2, rolling, appsv1.StatefulSetStatus{ReadyReplicas: 1, CurrentRevision: "a", UpdateRevision: "a"}), false, false},
		{"statefulset revisions differ", sts(2, 2, 2, rolling, appsv1.StatefulSetStatus{ReadyReplicas: 2, CurrentRevision: "a", UpdateRevision: "b"}), false, false},
		{"statefulset done", sts(2, 2, 2, rolling, appsv1.StatefulSetStatus{ReadyReplicas: 2, CurrentRevision: "b", UpdateRevision: "b"}), true, false},
		{"statefulset partition pending", sts(2, 2, 4, partition, appsv1.StatefulSetStatus{ReadyReplicas: 4, UpdatedReplicas: 1}), false, false},
		{"statefulset partition done", sts(2, 2, 4, partition, appsv1.StatefulSetStatus{ReadyReplicas: 4, UpdatedReplicas: 2}), true, false},
		{"statefulset ondelete pending", sts(2, 2, 3, onDelete, appsv1.StatefulSetStatus{ReadyReplicas: 3, UpdatedReplicas: 1, CurrentRevision: "a", UpdateRevision: "b"}), false, false},
		{"statefulset ondelete done", sts(2, 2, 3, onDelete, appsv1.StatefulSetStatus{ReadyReplicas: 3, UpdatedReplicas: 3, CurrentRevision: "a", UpdateRevision: "b"}), true, false},
		{"daemonset not observed", ds(2, 1, appsv1.RollingUpdateDaemonSetStrategyType, appsv1.DaemonSetStatus{}), false, false},
		{"daemonset updating", ds(2, 2, appsv1.RollingUpdateDaemonSetStrategyType, appsv1.DaemonSetStatus{DesiredNumberScheduled: 3, UpdatedNumberScheduled: 2, NumberAvailable: 3}), false, false},
		{"daemonset unavailable", ds(2, 2, appsv1.RollingUpdateDaemonSetStrategyType, appsv1.DaemonSetStatus{DesiredNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberAvailable: 2}), false, false},
		{"daemonset done", ds(2, 2, appsv1.RollingUpdateDaemonSetStrategyType, appsv1.DaemonSetStatus{DesiredNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberAvailable: 3}), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, done, err := Status(tc.obj)
			if done != tc.done || (err != nil) != tc.failed {
				t.Fatalf("Status(%s) = %q, %v, %v; want done %v, failed %v", tc.name, msg, done, err, tc.done, tc.failed)
			}
			if tc.failed && !errors.Is(err, ErrFailed) {
				t.Errorf("Status(%s) error %v does not wrap ErrFailed", tc.name, err)
			}
			if !tc.failed && msg == "" {
				t.Errorf("Status(%s) gave no message", tc.name)
			}
		})
	}
}
