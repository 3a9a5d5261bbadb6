//go:build e2e

// Package smoke proves the e2e framework on the cluster: a FROM scratch
// image built here runs in a Deployment that mounts a Secret, becomes
// available, the pod sees the Secret's file, and it reaches the API server
// through the kubernetes Service by its cluster DNS name (kube-proxy and
// CoreDNS work).
package smoke

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

func TestMain(m *testing.M) { os.Exit(framework.Main(m)) }

func TestDeploymentSeesMountedSecret(t *testing.T) {
	c := framework.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.BuildTestApp(ctx); err != nil {
		t.Fatal(err)
	}
	ns := c.Namespace(t)

	value := make([]byte, 16)
	rand.Read(value)
	want := []byte(hex.EncodeToString(value))
	_, err := c.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "app-secret"},
		Data:       map[string][]byte{"password": want},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create secret %s/app-secret: %v", ns, err)
	}
	labels := map[string]string{"app": "web"}
	one := int32(1)
	_, err = c.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name:            "app",
						Image:           framework.TestAppImage,
						ImagePullPolicy: corev1.PullNever,
						VolumeMounts:    []corev1.VolumeMount{{Name: "secret", MountPath: "/etc/app", ReadOnly: true}},
					}},
					Volumes: []corev1.Volume{{
						Name:         "secret",
						VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "app-secret"}},
					}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create deployment %s/web: %v", ns, err)
	}
	if err := c.WaitDeploymentAvailable(ctx, ns, "web", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	pods, err := c.Pods(ctx, ns, "app=web")
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 1 {
		t.Fatalf("pods of deployment %s/web: %d; want 1", ns, len(pods))
	}
	got, err := c.ReadFile(ctx, ns, pods[0].Name, "app", "/etc/app/password")
	if err != nil {
		t.Fatal(err)
	}
	// The value is random test data, but compare without printing it.
	if !bytes.Equal(got, want) {
		t.Errorf("/etc/app/password in pod %s/%s: %d bytes differ from the Secret's %d bytes", ns, pods[0].Name, len(got), len(want))
	}

	out, _, err := c.Exec(ctx, ns, pods[0].Name, "app", "apicheck")
	if err != nil {
		t.Fatalf("API server through the kubernetes Service from pod %s/%s: %v", ns, pods[0].Name, err)
	}
	if !strings.HasPrefix(string(out), "ok v") {
		t.Errorf("apicheck in pod %s/%s printed %q; want \"ok v...\"", ns, pods[0].Name, out)
	}
}

func TestStatefulSetAndDaemonSetBecomeReady(t *testing.T) {
	c := framework.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.BuildTestApp(ctx); err != nil {
		t.Fatal(err)
	}
	ns := c.Namespace(t)
	labels := map[string]string{"app": "db"}
	two := int32(2)
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: framework.TestAppImage, ImagePullPolicy: corev1.PullNever}},
		},
	}
	_, err := c.Client.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &two,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: template,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create statefulset %s/db: %v", ns, err)
	}
	_, err = c.Client.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "node-agent"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "node-agent"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "node-agent"}},
				Spec:       template.Spec,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create daemonset %s/node-agent: %v", ns, err)
	}
	if err := c.WaitStatefulSetReady(ctx, ns, "db", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitDaemonSetReady(ctx, ns, "node-agent", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}
