package watch

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/workload"
)

func TestTooManyDown(t *testing.T) {
	dep := func(reload string, replicas, available int32, maxUnavailable *intstr.IntOrString) workload.Workload {
		d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns"}}
		d.Spec.Replicas = ptr.To(replicas)
		d.Status.AvailableReplicas = available
		if maxUnavailable != nil {
			d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxUnavailable: maxUnavailable}
		}
		d.Spec.Template.Annotations = map[string]string{wellknown.AnnotationSecretPrefix + "db": "db"}
		d.Spec.Template.Spec.InitContainers = []corev1.Container{{Name: "k8secrets-agent-db", Args: []string{"--reload=" + reload}}}
		return workload.New(d)
	}
	one, zero, half := intstr.FromInt32(1), intstr.FromInt32(0), intstr.FromString("50%")
	for _, tc := range []struct {
		name string
		w    workload.Workload
		wait bool
	}{
		{"signal mode takes nothing down", dep("signal:SIGHUP", 3, 0, &zero), false},
		{"restart, all available, default 25% of 3 (rounds to 0, one at a time)", dep("restart", 3, 3, nil), false},
		{"restart, one already down, default", dep("restart", 3, 2, nil), true},
		{"restart, maxUnavailable 0 said outright", dep("restart", 3, 3, &zero), true},
		{"restart, one down, maxUnavailable 50% of 4", dep("restart", 4, 3, &half), false},
		{"restart, two down, maxUnavailable 50% of 4", dep("restart", 4, 2, &half), true},
		{"restart-all, all available, maxUnavailable 1", dep("restart-all", 2, 2, &one), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			why := (&Controller{}).tooManyDown(tc.w)
			if (why != "") != tc.wait {
				t.Errorf("tooManyDown = %q; want waiting %v", why, tc.wait)
			}
			if why != "" && !strings.Contains(why, "maxUnavailable") {
				t.Errorf("tooManyDown = %q; want it to name maxUnavailable", why)
			}
		})
	}
}
