package refresh

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/pager"
)

// Mounting lists the running pods in ns that mount secret, match selector
// (every pod if it is empty) and are not being deleted: the pods Pods pokes, found the same way (paged, only the pods
// that mount the Secret kept).
func Mounting(ctx context.Context, client kubernetes.Interface, ns, secret, selector string) ([]*corev1.Pod, error) {
	var out []*corev1.Pod
	p := pager.New(func(ctx context.Context, lo metav1.ListOptions) (runtime.Object, error) {
		return client.CoreV1().Pods(ns).List(ctx, lo)
	})
	p.PageSize = pageSize
	err := p.EachListItem(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("status.phase", string(corev1.PodRunning)).String(),
		LabelSelector: selector,
	}, func(obj runtime.Object) error {
		pod := obj.(*corev1.Pod)
		if pod.DeletionTimestamp == nil && mounts(pod, secret) {
			out = append(out, pod.DeepCopy()) // not a pointer into the page
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list pods in %s: %w", ns, err)
	}
	return out, nil
}
