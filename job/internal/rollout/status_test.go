package rollout

import (
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
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

// A failure condition already present, unchanged, in the object our write
// returned is stale (a ProgressDeadlineExceeded kept after a rollback to an
// existing ReplicaSet); a new one fails the rollout at once.
func TestStatusSince(t *testing.T) {
	t1, t2 := metav1.NewTime(time.Unix(1000, 0)), metav1.NewTime(time.Unix(2000, 0))
	pde := func(at metav1.Time) appsv1.DeploymentCondition {
		return appsv1.DeploymentCondition{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse,
			Reason: "ProgressDeadlineExceeded", Message: `ReplicaSet "web-1" has timed out progressing.`, LastUpdateTime: at, LastTransitionTime: at}
	}
	quota := appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate",
		Message: `pods "web-2-x" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2`, LastUpdateTime: t2, LastTransitionTime: t2}
	with := func(conds ...appsv1.DeploymentCondition) *appsv1.Deployment {
		return deploy(2, 2, 2, appsv1.DeploymentStatus{Replicas: 3, UpdatedReplicas: 1, AvailableReplicas: 2, Conditions: conds})
	}
	for _, tc := range []struct {
		name     string
		obj      runtime.Object
		written  runtime.Object
		failed   bool
		contains string
	}{
		{"stale deadline", with(pde(t1)), with(pde(t1)), false, ""},
		{"deadline after the write", with(pde(t2)), with(pde(t1)), true, "progress deadline"},
		{"deadline, no write known", with(pde(t1)), nil, true, "progress deadline"},
		{"replica failure", with(quota), with(), true, "exceeded quota"},
		{"stale replica failure", with(quota), with(quota), false, ""},
		{"replica failure false", with(appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionFalse}), nil, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := StatusSince(tc.obj, tc.written)
			if (err != nil) != tc.failed || err != nil && (!errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), tc.contains)) {
				t.Fatalf("StatusSince(%s) error = %v; want failed %v, wrapping ErrFailed and quoting %q", tc.name, err, tc.failed, tc.contains)
			}
		})
	}
}

// A DaemonSet with OnDelete is rolled out only when its pods carry the
// change, not as soon as the controller observed it.
func TestStatusDaemonSetOnDelete(t *testing.T) {
	pending := ds(2, 2, appsv1.OnDeleteDaemonSetStrategyType, appsv1.DaemonSetStatus{DesiredNumberScheduled: 3, UpdatedNumberScheduled: 0, NumberAvailable: 3})
	if _, done, err := Status(pending); done || err != nil {
		t.Errorf("Status(ondelete, no pod updated) = done %v, %v; want not done", done, err)
	}
	rolled := ds(2, 2, appsv1.OnDeleteDaemonSetStrategyType, appsv1.DaemonSetStatus{DesiredNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberAvailable: 3})
	if _, done, err := Status(rolled); !done || err != nil {
		t.Errorf("Status(ondelete, all updated) = done %v, %v; want done", done, err)
	}
}

// The wait judges the template by the injection hash our write put there,
// and only that one: another injection's hash may change meanwhile.
func TestCarries(t *testing.T) {
	tmpl := func(a, b string) *appsv1.Deployment {
		d := deploy(2, 2, 1, appsv1.DeploymentStatus{})
		d.Spec.Template.Annotations = map[string]string{"k8secrets.io/hash-a": a, "k8secrets.io/hash-b": b}
		return d
	}
	wr := written{obj: tmpl("1", "x"), keys: []string{"k8secrets.io/hash-a"}}
	if err := carries(tmpl("1", "y"), wr); err != nil {
		t.Errorf("carries(other injection changed) = %v; want nil", err)
	}
	if err := carries(tmpl("", "x"), wr); !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "no longer carries k8secrets.io/hash-a=1") {
		t.Errorf("carries(ours reverted) = %v; want ErrFailed naming the annotation", err)
	}
	if err := carries(tmpl("", "x"), written{obj: tmpl("1", "x")}); err != nil {
		t.Errorf("carries(no key recorded) = %v; want nil", err)
	}
}
