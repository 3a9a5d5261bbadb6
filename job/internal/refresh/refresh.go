// Package refresh makes the kubelets rewrite a Secret's volume in every pod
// that mounts it, now rather than at their next periodic sync (a minute or
// more): a change to a Pod object makes its kubelet resync that pod, and the
// resync rewrites its Secret volumes from the kubelet's current copy.
package refresh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/rollout"
)

// Options of one refresh.
type Options struct {
	Namespace, Secret string
	// AgentName is the name of the injection's agent container, whose
	// --reload argument tells whether the app is restarted.
	AgentName string
	// Settle bounds the wait for a restarting pod to restart and be Ready
	// again; a pod that has not restarted by then (its Secret content did
	// not change) is left as it is.
	Settle time.Duration
}

// Result says what was poked.
type Result struct {
	Pod       string `json:"pod"`
	Restarted bool   `json:"restarted,omitempty"`
	Detail    string `json:"detail,omitempty"`
}

// Pods annotates every running pod in o.Namespace that mounts o.Secret. Pods
// whose agent reloads by signal or HTTP are poked all at once; pods whose
// agent restarts the app are poked one at a time, each restarted and Ready
// before the next, so a refresh never takes all replicas down together.
func Pods(ctx context.Context, client kubernetes.Interface, o Options, log *slog.Logger) ([]Result, error) {
	list, err := client.CoreV1().Pods(o.Namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("status.phase", string(corev1.PodRunning)).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list pods in %s: %w", o.Namespace, err)
	}
	var now, oneByOne []*corev1.Pod
	for i := range list.Items {
		p := &list.Items[i]
		if p.DeletionTimestamp != nil || !mounts(p, o.Secret) {
			continue
		}
		if restarts(p, o.AgentName) {
			oneByOne = append(oneByOne, p)
		} else {
			now = append(now, p)
		}
	}
	var out []Result
	for _, p := range now {
		if err := poke(ctx, client, p); err != nil {
			return out, err
		}
		out = append(out, Result{Pod: p.Name})
	}
	for _, p := range oneByOne {
		before := restartCount(p)
		if err := poke(ctx, client, p); err != nil {
			return out, err
		}
		restarted, err := waitRestarted(ctx, client, p, before, o.Settle)
		if err != nil {
			return out, err
		}
		r := Result{Pod: p.Name, Restarted: restarted}
		if !restarted {
			r.Detail = fmt.Sprintf("not restarted within %s: its Secret content had not changed, or the agent is still waiting", o.Settle)
		}
		log.Info("refreshed", "namespace", p.Namespace, "name", p.Name, "restarted", restarted)
		out = append(out, r)
	}
	return out, nil
}

func mounts(p *corev1.Pod, secret string) bool {
	for _, v := range p.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			return true
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.Secret != nil && s.Secret.Name == secret {
					return true
				}
			}
		}
	}
	return false
}

// restarts tells whether the pod's agent for this Secret restarts the app.
func restarts(p *corev1.Pod, agent string) bool {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name != agent {
			continue
		}
		for _, a := range c.Args {
			if a == "--reload=restart" || a == "--reload=restart-all" {
				return true
			}
		}
	}
	return false
}

func poke(ctx context.Context, client kubernetes.Interface, p *corev1.Pod) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		wellknown.RefreshAnnotation: time.Now().UTC().Format(time.RFC3339Nano),
	}}})
	_, err := client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: wellknown.FieldManager})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("annotate pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// restartCount sums the restarts of the pod's app containers.
func restartCount(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		if !strings.HasPrefix(s.Name, wellknown.AgentContainerPrefix+"-") {
			n += s.RestartCount
		}
	}
	return n
}

// waitRestarted waits, at most settle, for the pod's app to have restarted
// since before and the pod to be Ready again.
func waitRestarted(ctx context.Context, client kubernetes.Interface, p *corev1.Pod, before int32, settle time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, settle)
	defer cancel()
	err := rollout.WaitPod(ctx, client, p.Namespace, p.Name, func(cur *corev1.Pod) (bool, error) {
		if cur == nil {
			return false, fmt.Errorf("pod %s/%s was deleted", p.Namespace, p.Name)
		}
		return restartCount(cur) > before && rollout.PodReady(cur), nil
	})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return false, nil // settled without a restart
	}
	return false, fmt.Errorf("wait for pod %s/%s to restart: %w", p.Namespace, p.Name, err)
}
