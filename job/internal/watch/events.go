package watch

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8secrets/k8secrets/job/internal/workload"
)

func secretRef(s *corev1.Secret) corev1.ObjectReference {
	return corev1.ObjectReference{APIVersion: "v1", Kind: "Secret", Namespace: s.Namespace, Name: s.Name, UID: s.UID}
}

func workloadRef(w workload.Workload) corev1.ObjectReference {
	m := w.Meta()
	return corev1.ObjectReference{APIVersion: "apps/v1", Kind: string(w.Kind()), Namespace: m.GetNamespace(), Name: m.GetName(), UID: m.GetUID()}
}

// emit writes an events.k8s.io/v1 Event on ref, synchronously as
// job/internal/record does. A failure is logged, not returned. Notes hold
// names, counts and reasons, never a Secret value.
func (c *Controller) emit(ctx context.Context, ref corev1.ObjectReference, typ, reason, action, note string) {
	if len(note) > 1024 {
		note = note[:1021] + "..."
	}
	now := time.Now()
	ev := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", ref.Name, now.UnixNano()), Namespace: ref.Namespace},
		EventTime:           metav1.NewMicroTime(now),
		Regarding:           ref,
		ReportingController: ReportingController,
		ReportingInstance:   c.o.Instance,
		Action:              action,
		Reason:              reason,
		Type:                typ,
		Note:                note,
	}
	if _, err := c.client.EventsV1().Events(ref.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		c.log.Warn("record event", "kind", ref.Kind, "namespace", ref.Namespace, "name", ref.Name, "reason", reason, "error", err)
	}
}
