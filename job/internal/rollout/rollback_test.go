package rollout

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
)

func entry(manager string, op metav1.ManagedFieldsOperationType, sec int, fields string) metav1.ManagedFieldsEntry {
	t := metav1.NewTime(time.Date(2026, 11, 30, 22, 0, sec, 0, time.UTC))
	return metav1.ManagedFieldsEntry{Manager: manager, Operation: op, Time: &t, FieldsType: "FieldsV1",
		FieldsV1: &metav1.FieldsV1{Raw: []byte(fields)}}
}

const (
	ours      = `{"f:metadata":{"f:labels":{"f:k8secrets.io/injected":{}}},"f:spec":{"f:template":{"f:spec":{"f:volumes":{"k:{\"name\":\"k8secrets-db\"}":{".":{},"f:name":{},"f:secret":{"f:secretName":{}}}}}}}}`
	setImage  = `{"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"app\"}":{"f:image":{}}}}}}}`
	revision  = `{"f:metadata":{"f:annotations":{"f:deployment.kubernetes.io/revision":{}}}}`
	statusFld = `{"f:status":{"f:replicas":{}}}`
)

func names(ws []Writer) string {
	var s []string
	for _, w := range ws {
		s = append(s, w.Manager)
	}
	return strings.Join(s, ",")
}

func TestTemplateFields(t *testing.T) {
	got := templateFields(entry("kubectl-set", metav1.ManagedFieldsOperationUpdate, 0, setImage))
	if len(got) != 1 || got[0] != "spec.template.spec.containers[name=app].image" {
		t.Errorf("templateFields(set image) = %v; want the app container's image", got)
	}
	if got := templateFields(entry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, 0, revision)); got != nil {
		t.Errorf("templateFields(revision annotation) = %v; want none", got)
	}
}

func TestChangedWriters(t *testing.T) {
	const m = "k8secrets/db"
	base := []metav1.ManagedFieldsEntry{
		entry("kubectl-create", metav1.ManagedFieldsOperationUpdate, 0, setImage),
		entry(m, metav1.ManagedFieldsOperationApply, 10, ours),
		entry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, 10, revision),
	}
	for _, tc := range []struct {
		name string
		now  []metav1.ManagedFieldsEntry
		want string
	}{
		{"nobody", base, ""},
		{"a hotfix by a new manager", append(append([]metav1.ManagedFieldsEntry{}, base...), entry("kubectl-set", metav1.ManagedFieldsOperationUpdate, 20, setImage)), "kubectl-set"},
		{"the creator writes again", []metav1.ManagedFieldsEntry{entry("kubectl-create", metav1.ManagedFieldsOperationUpdate, 20, setImage), base[1], base[2]}, "kubectl-create"},
		{"controller and status only", []metav1.ManagedFieldsEntry{base[0], base[1], entry("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, 30, revision),
			{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, Subresource: "status", FieldsV1: &metav1.FieldsV1{Raw: []byte(statusFld)}}}, ""},
		{"our own write", []metav1.ManagedFieldsEntry{base[0], entry(m, metav1.ManagedFieldsOperationApply, 40, ours), base[2]}, ""},
		{"another injection", append(append([]metav1.ManagedFieldsEntry{}, base...), entry("k8secrets/other", metav1.ManagedFieldsOperationApply, 20, ours)), "k8secrets/other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := names(changedWriters(base, tc.now, m)); got != tc.want {
				t.Errorf("changedWriters = %q; want %q", got, tc.want)
			}
		})
	}
}

func TestNotStartedByUs(t *testing.T) {
	const m = "k8secrets/db"
	create := entry("kubectl-create", metav1.ManagedFieldsOperationUpdate, 0, setImage)
	dep := func(entries []metav1.ManagedFieldsEntry, reason string) *appsv1.Deployment {
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Generation: 3, ManagedFields: entries},
			Status: appsv1.DeploymentStatus{ObservedGeneration: 3, Conditions: []appsv1.DeploymentCondition{
				{Type: appsv1.DeploymentProgressing, Reason: reason, LastUpdateTime: *entry("", "", 12, "").Time}}},
		}
	}
	stale := dep([]metav1.ManagedFieldsEntry{create, entry(m, metav1.ManagedFieldsOperationApply, 13, ours)}, "NewReplicaSetAvailable")
	for _, tc := range []struct {
		name     string
		obj      *appsv1.Deployment
		recorded bool
		want     string // substring of the reason; "" for ours
	}{
		{"our rollout in progress", dep([]metav1.ManagedFieldsEntry{create, entry(m, metav1.ManagedFieldsOperationApply, 10, ours)}, "ReplicaSetUpdated"), true, ""},
		{"our rollout past its deadline", dep([]metav1.ManagedFieldsEntry{create, entry(m, metav1.ManagedFieldsOperationApply, 10, ours)}, "ProgressDeadlineExceeded"), true, ""},
		{"a hotfix after ours", dep([]metav1.ManagedFieldsEntry{create, entry(m, metav1.ManagedFieldsOperationApply, 10, ours), entry("kubectl-set", metav1.ManagedFieldsOperationUpdate, 11, setImage)}, "ReplicaSetUpdated"), true, "changed after this Job's write by kubectl-set"},
		{"a hotfix in the same second", dep([]metav1.ManagedFieldsEntry{create, entry(m, metav1.ManagedFieldsOperationApply, 10, ours), entry("kubectl-set", metav1.ManagedFieldsOperationUpdate, 10, setImage)}, "ReplicaSetUpdated"), true, ""},
		{"back to an existing ReplicaSet, its old condition stale", stale, true, ""},
		{"completed, unhealthy since", dep([]metav1.ManagedFieldsEntry{create, entry(m, metav1.ManagedFieldsOperationApply, 10, ours)}, "NewReplicaSetAvailable"), true, "completed"},
		{"never applied", dep([]metav1.ManagedFieldsEntry{create}, "ReplicaSetUpdated"), false, "never applied"},
		{"no record", dep([]metav1.ManagedFieldsEntry{create, entry(m, metav1.ManagedFieldsOperationApply, 10, ours)}, "ReplicaSetUpdated"), false, "no record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := notStartedByUs(tc.obj, m, tc.recorded)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("notStartedByUs = %q; want %q", got, tc.want)
			}
		})
	}
}

// The record holds the previous intent without the record it held itself,
// and reads back as an apply configuration of the workload's kind.
func TestRecordPrevious(t *testing.T) {
	prev := appsv1ac.Deployment("web", "shop").
		WithAnnotations(map[string]string{PreviousAnnotation("db"): "{}"}).
		WithLabels(map[string]string{"k8secrets.io/injected": "true"}).
		WithSpec(appsv1ac.DeploymentSpec().WithTemplate(corev1ac.PodTemplateSpec().
			WithSpec(corev1ac.PodSpec().WithVolumes(corev1ac.Volume().WithName("k8secrets-db")))))
	rec, err := recordPrevious(prev, "db")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(rec, PreviousAnnotation("db")) {
		t.Errorf("record %s holds the previous record", rec)
	}
	obj := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Annotations: map[string]string{PreviousAnnotation("db"): rec}}}
	got, ok, err := previousOf(obj, "db")
	if err != nil || !ok {
		t.Fatalf("previousOf = %v, %v", ok, err)
	}
	d := got.(*appsv1ac.DeploymentApplyConfiguration)
	if *d.Name != "web" || *d.Namespace != "shop" || len(d.Spec.Template.Spec.Volumes) != 1 || d.Labels["k8secrets.io/injected"] != "true" {
		b, _ := json.Marshal(d)
		t.Errorf("previousOf = %s; want the recorded intent", b)
	}
	ac, err := withAnnotation(appsv1ac.Deployment("web", "shop"), PreviousAnnotation("db"), rec)
	if err != nil || ac.(*appsv1ac.DeploymentApplyConfiguration).Annotations[PreviousAnnotation("db")] != rec {
		t.Errorf("withAnnotation = %v, %v", ac, err)
	}
}
