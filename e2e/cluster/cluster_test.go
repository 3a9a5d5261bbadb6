package cluster

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

func TestReadiness(t *testing.T) {
	node := func(ready corev1.ConditionStatus) *corev1.Node {
		return &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "n"},
			Status:     corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready}}},
		}
	}
	proxy := func(desired, ready int32) *appsv1.DaemonSet {
		return &appsv1.DaemonSet{
			ObjectMeta: metav1.ObjectMeta{Name: "kube-proxy", Namespace: "kube-system"},
			Status:     appsv1.DaemonSetStatus{DesiredNumberScheduled: desired, NumberReady: ready},
		}
	}
	two := int32(2)
	dns := func(available int32) *appsv1.Deployment {
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "coredns", Namespace: "kube-system", Generation: 1},
			Spec:       appsv1.DeploymentSpec{Replicas: &two},
			Status:     appsv1.DeploymentStatus{ObservedGeneration: 1, UpdatedReplicas: 2, AvailableReplicas: available},
		}
	}
	tests := []struct {
		name    string
		objects []runtime.Object
		want    bool
		wantMsg string
	}{
		{name: "no nodes", want: false, wantMsg: "no nodes"},
		{name: "node not ready", objects: []runtime.Object{node(corev1.ConditionFalse), proxy(1, 1), dns(2)}, wantMsg: "node n not Ready"},
		{name: "kube-proxy not ready", objects: []runtime.Object{node(corev1.ConditionTrue), proxy(1, 0), dns(2)}, wantMsg: "kube-proxy: 0 of 1"},
		{name: "kube-proxy not scheduled", objects: []runtime.Object{node(corev1.ConditionTrue), proxy(0, 0), dns(2)}, wantMsg: "kube-proxy: 0 of 0"},
		{name: "coredns partly available", objects: []runtime.Object{node(corev1.ConditionTrue), proxy(1, 1), dns(1)}, wantMsg: "coredns: 1 of 2"},
		{name: "ready", objects: []runtime.Object{node(corev1.ConditionTrue), proxy(1, 1), dns(2)}, want: true, wantMsg: "ready"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, ok := readiness(context.Background(), fake.NewClientset(tt.objects...))
			if ok != tt.want || !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("readiness() = %q, %t; want %q, %t", msg, ok, tt.wantMsg, tt.want)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	c := config(Options{SyncFrequency: 5 * time.Second, KubeadmPatches: []string{"kind: ClusterConfiguration\n"}}, "k8secrets/node:v1.37.2")
	if !c.Networking.DisableDefaultCNI {
		t.Error("offline node image: DisableDefaultCNI = false; want true (kindnetd cannot be pulled)")
	}
	patch := strings.Join(c.KubeadmConfigPatches, "\n")
	for _, want := range []string{"kind: KubeletConfiguration", "failCgroupV1: false", "syncFrequency: 5s", "kind: ClusterConfiguration"} {
		if !strings.Contains(patch, want) {
			t.Errorf("kubeadm patches %q lack %q", patch, want)
		}
	}
	if c := config(Options{}, StockImage); c.Networking.DisableDefaultCNI {
		t.Error("stock node image: DisableDefaultCNI = true; want false (it ships kindnetd)")
	}
}

// TestWrapperScript runs the docker wrapper against a fake docker that
// prints its arguments.
func TestWrapperScript(t *testing.T) {
	dir := t.TempDir()
	fakeDocker := filepath.Join(dir, "real-docker")
	if err := os.WriteFile(fakeDocker, []byte("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(dir, "docker")
	if err := os.WriteFile(wrapper, []byte(strings.Replace(wrapperScript, "%q", `"`+fakeDocker+`"`, 1)), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		want    []string
		notWant []string
	}{
		{
			name:    "run",
			args:    []string{"run", "--privileged", "--name", "n", "image"},
			want:    []string{"run", "--cap-add=ALL", "--cap-drop=SYS_RESOURCE", "--device-cgroup-rule=a *:* rwm", "/dev/kmsg", "--name", "n", "image"},
			notWant: []string{"--privileged"},
		},
		{
			name:    "exec",
			args:    []string{"exec", "--privileged", "n", "crictl", "images"},
			want:    []string{"exec", "n", "crictl", "images"},
			notWant: []string{"--privileged", "--cap-add=ALL"},
		},
		{name: "other", args: []string{"ps", "-a"}, want: []string{"ps", "-a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(wrapper, tt.args...).Output()
			if err != nil {
				t.Fatalf("wrapper %v: %v", tt.args, err)
			}
			got := strings.Split(strings.TrimSpace(string(out)), "\n")
			for _, w := range tt.want {
				if !slices.Contains(got, w) {
					t.Errorf("wrapper %v passed %q; want it to contain %q", tt.args, got, w)
				}
			}
			for _, w := range tt.notWant {
				if slices.Contains(got, w) {
					t.Errorf("wrapper %v passed %q; want no %q", tt.args, got, w)
				}
			}
		})
	}
}
