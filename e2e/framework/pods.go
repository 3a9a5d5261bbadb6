package framework

import (
	"bytes"
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
)

// WaitDeploymentAvailable waits until the Deployment's controller has seen
// its latest spec and every replica is updated and available, as `kubectl
// rollout status` does. The error says what it still waited for, with the
// state of the pods.
func (c *Cluster) WaitDeploymentAvailable(ctx context.Context, ns, name string, timeout time.Duration) error {
	var last string
	var dep *appsv1.Deployment
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := c.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		dep = d
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		s := d.Status
		switch {
		case s.ObservedGeneration < d.Generation:
			last = "controller has not seen the latest spec"
		case s.UpdatedReplicas < want:
			last = fmt.Sprintf("%d of %d replicas updated", s.UpdatedReplicas, want)
		case s.Replicas > s.UpdatedReplicas:
			last = fmt.Sprintf("%d old replicas pending termination", s.Replicas-s.UpdatedReplicas)
		case s.AvailableReplicas < want:
			last = fmt.Sprintf("%d of %d updated replicas available", s.AvailableReplicas, want)
		default:
			return true, nil
		}
		return false, nil
	})
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf("wait for deployment %s/%s: %s: %v", ns, name, last, err)
	if dep != nil && dep.Spec.Selector != nil {
		sel := metav1.FormatLabelSelector(dep.Spec.Selector)
		pods, perr := c.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: sel})
		if perr == nil {
			for _, p := range pods.Items {
				msg += fmt.Sprintf("\n  pod %s: %s", p.Name, podSummary(&p))
			}
		}
	}
	return fmt.Errorf("%s", msg)
}

// Pods lists the pods of ns that match a label selector ("app=web").
func (c *Cluster) Pods(ctx context.Context, ns, selector string) ([]corev1.Pod, error) {
	l, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("list pods %s in %s: %w", selector, ns, err)
	}
	return l.Items, nil
}

// Exec runs command in a container of a pod through the API server's exec
// subresource (WebSocket, falling back to SPDY), as `kubectl exec` does,
// and returns its standard output and error. A non-zero exit is an error.
func (c *Cluster) Exec(ctx context.Context, ns, pod, container string, command ...string) (stdout, stderr []byte, err error) {
	req := c.Client.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: container,
			Command:   command,
			Stdout:    true,
			Stderr:    true,
		}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(c.Config, "GET", req.URL().String())
	if err != nil {
		return nil, nil, fmt.Errorf("exec in pod %s/%s: %w", ns, pod, err)
	}
	spdy, err := remotecommand.NewSPDYExecutor(c.Config, "POST", req.URL())
	if err != nil {
		return nil, nil, fmt.Errorf("exec in pod %s/%s: %w", ns, pod, err)
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, httpstream.IsUpgradeFailure)
	if err != nil {
		return nil, nil, fmt.Errorf("exec in pod %s/%s: %w", ns, pod, err)
	}
	var out, errOut bytes.Buffer
	err = exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut})
	if err != nil {
		return out.Bytes(), errOut.Bytes(), fmt.Errorf("exec %q in pod %s/%s: %w (stderr: %s)", command, ns, pod, err, bytes.TrimSpace(errOut.Bytes()))
	}
	return out.Bytes(), errOut.Bytes(), nil
}

// ReadFile returns a file's content as a container of the pod sees it, by
// running `cat PATH` there: the image needs a cat on its PATH (the test app
// image built by BuildTestApp has one). Callers must not print the content
// of files that hold secret values.
func (c *Cluster) ReadFile(ctx context.Context, ns, pod, container, path string) ([]byte, error) {
	out, _, err := c.Exec(ctx, ns, pod, container, "cat", path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

// WaitStatefulSetReady waits, as `kubectl rollout status` does for a
// RollingUpdate StatefulSet, until the controller has seen the latest spec,
// every replica is ready and (when an update is in progress) every pod runs
// the update revision. For OnDelete StatefulSets it waits for readiness
// only: their pods change revision when something deletes them.
func (c *Cluster) WaitStatefulSetReady(ctx context.Context, ns, name string, timeout time.Duration) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		s, err := c.Client.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		want := int32(1)
		if s.Spec.Replicas != nil {
			want = *s.Spec.Replicas
		}
		st := s.Status
		switch {
		case st.ObservedGeneration < s.Generation:
			last = "controller has not seen the latest spec"
		case st.ReadyReplicas < want:
			last = fmt.Sprintf("%d of %d replicas ready", st.ReadyReplicas, want)
		case s.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType:
			return true, nil
		case st.UpdatedReplicas < want || st.UpdateRevision != st.CurrentRevision && st.CurrentRevision != "":
			last = fmt.Sprintf("%d of %d replicas at revision %s", st.UpdatedReplicas, want, st.UpdateRevision)
		default:
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("wait for statefulset %s/%s: %s: %w", ns, name, last, err)
	}
	return nil
}

// WaitDaemonSetReady waits until the DaemonSet's controller has seen the
// latest spec and every scheduled pod is updated and available.
func (c *Cluster) WaitDaemonSetReady(ctx context.Context, ns, name string, timeout time.Duration) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := c.Client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		st := d.Status
		switch {
		case st.ObservedGeneration < d.Generation:
			last = "controller has not seen the latest spec"
		case st.DesiredNumberScheduled == 0:
			last = "no pod scheduled yet"
		case st.UpdatedNumberScheduled < st.DesiredNumberScheduled:
			last = fmt.Sprintf("%d of %d pods updated", st.UpdatedNumberScheduled, st.DesiredNumberScheduled)
		case st.NumberAvailable < st.DesiredNumberScheduled:
			last = fmt.Sprintf("%d of %d pods available", st.NumberAvailable, st.DesiredNumberScheduled)
		default:
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("wait for daemonset %s/%s: %s: %w", ns, name, last, err)
	}
	return nil
}
