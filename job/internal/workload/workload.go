// Package workload finds the Deployments, StatefulSets and DaemonSets behind
// a set of running pods, and reduces each to its pod template in one place.
package workload

import (
	"context"
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/pager"
)

// Kind is a workload kind the Job manages.
type Kind string

// The kinds the Job manages.
const (
	Deployment  Kind = "Deployment"
	StatefulSet Kind = "StatefulSet"
	DaemonSet   Kind = "DaemonSet"
)

// Workload is one Deployment, StatefulSet or DaemonSet, as last read.
type Workload struct {
	// Object is a *appsv1.Deployment, *appsv1.StatefulSet or *appsv1.DaemonSet.
	// It may be shared with a cache: DeepCopy before changing it.
	Object runtime.Object
	// Pods counts the matched running pods that belong to it.
	Pods int
}

// New wraps obj, which must be one of the three kinds.
func New(obj runtime.Object) Workload { return Workload{Object: obj} }

// Kind of the workload.
func (w Workload) Kind() Kind { return KindOf(w.Object) }

// Meta is the workload's object metadata.
func (w Workload) Meta() metav1.Object { return meta(w.Object) }

// Name of the workload.
func (w Workload) Name() string { return w.Meta().GetName() }

// Namespace of the workload.
func (w Workload) Namespace() string { return w.Meta().GetNamespace() }

// String is "Deployment ns/name", the form used in every message.
func (w Workload) String() string {
	return fmt.Sprintf("%s %s/%s", w.Kind(), w.Namespace(), w.Name())
}

// Template is the workload's pod template.
func (w Workload) Template() *corev1.PodTemplateSpec { return Template(w.Object) }

// KindOf names the kind of a workload object.
func KindOf(obj runtime.Object) Kind {
	switch obj.(type) {
	case *appsv1.Deployment:
		return Deployment
	case *appsv1.StatefulSet:
		return StatefulSet
	case *appsv1.DaemonSet:
		return DaemonSet
	}
	panic(fmt.Sprintf("workload: unsupported object %T", obj))
}

// Template returns obj's pod template; the one switch over kinds for it.
func Template(obj runtime.Object) *corev1.PodTemplateSpec {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return &o.Spec.Template
	case *appsv1.StatefulSet:
		return &o.Spec.Template
	case *appsv1.DaemonSet:
		return &o.Spec.Template
	}
	panic(fmt.Sprintf("workload: unsupported object %T", obj))
}

func meta(obj runtime.Object) metav1.Object {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o
	case *appsv1.StatefulSet:
		return o
	case *appsv1.DaemonSet:
		return o
	}
	panic(fmt.Sprintf("workload: unsupported object %T", obj))
}

// Skipped is a matched pod whose owner the Job will not change, and why.
type Skipped struct {
	Pod    string `json:"pod"`
	Owner  string `json:"owner,omitempty"`
	Reason string `json:"reason"`
}

// Getter reads workloads and ReplicaSets by name in one namespace; a Cache
// serves it from informers, so resolving costs no request per workload.
type Getter interface {
	ReplicaSet(name string) (*appsv1.ReplicaSet, error)
	Get(kind Kind, name string) (runtime.Object, error)
}

// RunningPods lists the running pods in namespace that match selector, in
// pages, keeping of each only what Resolve reads (name and owners): with ten
// thousand pods, whole pod objects would dominate the Job's memory.
func RunningPods(ctx context.Context, client kubernetes.Interface, namespace, selector string) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	p := pager.New(func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return client.CoreV1().Pods(namespace).List(ctx, o)
	})
	p.PageSize = 500
	err := p.EachListItem(ctx, metav1.ListOptions{
		LabelSelector: selector,
		FieldSelector: fields.OneTermEqualSelector("status.phase", string(corev1.PodRunning)).String(),
	}, func(obj runtime.Object) error {
		pod := obj.(*corev1.Pod)
		pods = append(pods, corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, OwnerReferences: pod.OwnerReferences,
		}})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list pods in %s matching %q: %w", namespace, selector, err)
	}
	return pods, nil
}

// Resolve maps pods to their owning workloads, one entry per workload in a
// stable order (kind, then name), and reports the pods it skips.
func Resolve(pods []corev1.Pod, g Getter) ([]Workload, []Skipped, error) {
	type key struct {
		kind Kind
		name string
	}
	found := map[key]*Workload{}
	var skipped []Skipped
	for i := range pods {
		p := &pods[i]
		podRef := p.Namespace + "/" + p.Name
		ref := metav1.GetControllerOf(p)
		if ref == nil {
			skipped = append(skipped, Skipped{Pod: podRef, Reason: "bare pod: its volumes cannot change without deleting it; run it from a Deployment, StatefulSet or DaemonSet"})
			continue
		}
		owner := ref.Kind + " " + p.Namespace + "/" + ref.Name
		// Owners are told apart by group and kind: an apps.kruise.io
		// StatefulSet is not an apps one, and its controller would undo
		// (or never roll) a change to a template it does not read.
		var k key
		switch group(ref.APIVersion) + "/" + ref.Kind {
		case "apps/ReplicaSet":
			rs, err := g.ReplicaSet(ref.Name)
			if apierrors.IsNotFound(err) {
				skipped = append(skipped, Skipped{Pod: podRef, Owner: owner, Reason: "its ReplicaSet is gone (being deleted?)"})
				continue
			}
			if err != nil {
				return nil, nil, fmt.Errorf("resolve owner of pod %s: %w", podRef, err)
			}
			dep := metav1.GetControllerOf(rs)
			if dep != nil && (dep.Kind != string(Deployment) || group(dep.APIVersion) != appsv1.GroupName) {
				skipped = append(skipped, Skipped{Pod: podRef, Owner: dep.Kind + " " + p.Namespace + "/" + dep.Name,
					Reason: fmt.Sprintf("its ReplicaSet is owned by a %s (%s), which k8secrets does not manage: that controller would undo or ignore a change to the template", dep.Kind, dep.APIVersion)})
				continue
			}
			if dep == nil {
				skipped = append(skipped, Skipped{Pod: podRef, Owner: owner, Reason: "a ReplicaSet not managed by a Deployment: its pods are not replaced when its template changes; use a Deployment"})
				continue
			}
			k = key{Deployment, dep.Name}
		case "apps/" + string(StatefulSet), "apps/" + string(DaemonSet):
			k = key{Kind(ref.Kind), ref.Name}
		case "batch/Job":
			skipped = append(skipped, Skipped{Pod: podRef, Owner: owner, Reason: "a Job's pods run to completion and are never replaced; add the volume to the Job's (or CronJob's) template"})
			continue
		default:
			skipped = append(skipped, Skipped{Pod: podRef, Owner: owner, Reason: fmt.Sprintf("owned by a %s (%s), which k8secrets does not manage", ref.Kind, ref.APIVersion)})
			continue
		}
		if w, ok := found[k]; ok {
			w.Pods++
			continue
		}
		obj, err := g.Get(k.kind, k.name)
		if apierrors.IsNotFound(err) {
			skipped = append(skipped, Skipped{Pod: podRef, Owner: string(k.kind) + " " + p.Namespace + "/" + k.name, Reason: "its owner is gone (being deleted?)"})
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("resolve owner of pod %s: %w", podRef, err)
		}
		found[k] = &Workload{Object: obj, Pods: 1}
	}
	out := make([]Workload, 0, len(found))
	for _, w := range found {
		out = append(out, *w)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind() != out[j].Kind() {
			return out[i].Kind() < out[j].Kind()
		}
		return out[i].Name() < out[j].Name()
	})
	return out, skipped, nil
}

// group is the API group of an owner reference's apiVersion ("" for core).
func group(apiVersion string) string {
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		return "?"
	}
	return gv.Group
}

// Selector is the workload's pod selector (nil for another kind).
func Selector(obj runtime.Object) *metav1.LabelSelector {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.Spec.Selector
	case *appsv1.StatefulSet:
		return o.Spec.Selector
	case *appsv1.DaemonSet:
		return o.Spec.Selector
	}
	return nil
}

// ObservedGeneration is the generation the workload's controller has seen.
func ObservedGeneration(obj runtime.Object) int64 {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.Status.ObservedGeneration
	case *appsv1.StatefulSet:
		return o.Status.ObservedGeneration
	case *appsv1.DaemonSet:
		return o.Status.ObservedGeneration
	}
	panic(fmt.Sprintf("workload: unsupported object %T", obj))
}
