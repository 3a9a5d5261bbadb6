package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// kwok simulates the nodes: it marks the pods bound to its nodes Running and
// Ready without starting a container, and finishes their deletion.
const (
	kwokModule   = "sigs.k8s.io/kwok"
	kwokNS       = "kube-system"
	kwokName     = "kwok-controller"
	kwokNodeAnno = "kwok.x-k8s.io/node" // kwok manages the nodes annotated fake; its taint has the same key
	// kwokPodsPerNode stays below the 4094 addresses of the /20 each node
	// gets, from which kwok hands out pod IPs.
	kwokPodsPerNode = 3000
)

// kwokStages are kwok's own fast stages (what kwokctl configures): nodes
// Ready at once with a lease heartbeat, pods Ready at once, deletions done at
// once. They are read from the module source, not copied here.
var kwokStages = []string{
	"kustomize/stage/node/fast/node-initialize.yaml",
	"kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
	"kustomize/stage/pod/fast/pod-ready.yaml",
	"kustomize/stage/pod/fast/pod-complete.yaml",
	"kustomize/stage/pod/fast/pod-delete.yaml",
}

// kwokImage builds kwok statically from the module proxy (cached by version
// under cacheDir) and an image FROM scratch holding only the binary. It
// returns the image's tag and the module's source folder.
func kwokImage(ctx context.Context, cacheDir, version string, log *slog.Logger) (tag, src string, err error) {
	binDir := filepath.Join(cacheDir, "kwok-"+version)
	bin := filepath.Join(binDir, "kwok")
	if _, err := os.Stat(bin); err != nil {
		log.Info("building kwok from the module proxy", "version", version)
		cmd := exec.CommandContext(ctx, "go", "install", "-trimpath", "-ldflags=-s -w", kwokModule+"/cmd/kwok@"+version)
		cmd.Env = append(os.Environ(), "GOBIN="+binDir, "CGO_ENABLED=0", "GOFLAGS=")
		cmd.Dir = os.TempDir() // outside any module
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go install kwok %s: %w: %s", version, err, out)
		}
	}
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", kwokModule+"@"+version)
	cmd.Dir = os.TempDir()
	out, err := cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("go mod download kwok %s: %w", version, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return "", "", fmt.Errorf("go mod download kwok %s: no source folder (%v)", version, err)
	}

	tag = "k8secrets-bench/kwok:" + version
	dir, err := os.MkdirTemp("", "kwok-image")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(dir)
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "kwok"), data, 0o755); err != nil {
		return "", "", err
	}
	dockerfile := "FROM scratch\nCOPY kwok /kwok\nUSER 65532:65532\nENTRYPOINT [\"/kwok\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return "", "", err
	}
	if out, err := exec.CommandContext(ctx, "docker", "build", "-q", "-t", tag, dir).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("docker build %s: %w: %s", tag, err, out)
	}
	return tag, mod.Dir, nil
}

// kwokConfig is kwok's configuration file: its options and the stages.
func kwokConfig(src string) (string, error) {
	docs := []string{`apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  manageAllNodes: false
  manageNodesWithAnnotationSelector: 'kwok.x-k8s.io/node=fake'
  nodeLeaseDurationSeconds: 40
  nodeLeaseParallelism: 4
  nodePort: 10247
  podPlayStageParallelism: 64
  nodePlayStageParallelism: 2
  enableCRDs: []
`}
	for _, f := range kwokStages {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			return "", fmt.Errorf("kwok stage: %w", err)
		}
		docs = append(docs, string(b))
	}
	return strings.Join(docs, "\n---\n"), nil
}

// deployKwok runs kwok in kube-system with the RBAC it needs (kwok's own
// ClusterRole without its CRDs) and an exempt FlowSchema, as kwok ships it,
// and waits for it to be available.
func deployKwok(ctx context.Context, c kubernetes.Interface, image, src string) error {
	conf, err := kwokConfig(src)
	if err != nil {
		return err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: kwokName, Namespace: kwokNS}}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: kwokName},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch", "update"}},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status", "pods/status"}, Verbs: []string{"patch", "update"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"delete", "get", "list", "patch", "update", "watch"}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create", "get", "list", "patch", "update", "watch"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: kwokName},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: kwokName},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: kwokName, Namespace: kwokNS}},
	}
	// kwok writes a pod status or two per pod: keep it out of the API
	// server's fairness queues, as kwok's own manifests do.
	fs := &flowcontrolv1.FlowSchema{
		ObjectMeta: metav1.ObjectMeta{Name: kwokName},
		Spec: flowcontrolv1.FlowSchemaSpec{
			PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: "exempt"},
			MatchingPrecedence:         1000,
			Rules: []flowcontrolv1.PolicyRulesWithSubjects{{
				Subjects: []flowcontrolv1.Subject{{Kind: flowcontrolv1.SubjectKindServiceAccount,
					ServiceAccount: &flowcontrolv1.ServiceAccountSubject{Name: kwokName, Namespace: kwokNS}}},
				ResourceRules: []flowcontrolv1.ResourcePolicyRule{{Verbs: []string{"*"}, APIGroups: []string{"*"},
					Resources: []string{"*"}, ClusterScope: true, Namespaces: []string{"*"}}},
			}},
		},
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: kwokName, Namespace: kwokNS}, Data: map[string]string{"kwok.yaml": conf}}
	one := int32(1)
	labels := map[string]string{"app": kwokName}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: kwokName, Namespace: kwokNS},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: kwokName,
					Containers: []corev1.Container{{
						Name: "kwok", Image: image, ImagePullPolicy: corev1.PullNever,
						Args: []string{"--config=/etc/kwok/kwok.yaml", "--node-ip=$(POD_IP)"},
						Env: []corev1.EnvVar{
							{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
							{Name: "HOME", Value: "/tmp"},
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(10247)}},
							PeriodSeconds: 2,
						},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "config", MountPath: "/etc/kwok", ReadOnly: true},
							{Name: "tmp", MountPath: "/tmp"},
						},
					}},
					Volumes: []corev1.Volume{
						{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: kwokName}}}},
						{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					},
				},
			},
		},
	}
	if err := create(ctx, func(ctx context.Context) error {
		_, err := c.CoreV1().ServiceAccounts(kwokNS).Create(ctx, sa, metav1.CreateOptions{})
		return err
	}, func(ctx context.Context) error {
		_, err := c.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
		return err
	}, func(ctx context.Context) error {
		_, err := c.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
		return err
	}, func(ctx context.Context) error {
		_, err := c.FlowcontrolV1().FlowSchemas().Create(ctx, fs, metav1.CreateOptions{})
		return err
	}, func(ctx context.Context) error {
		_, err := c.CoreV1().ConfigMaps(kwokNS).Create(ctx, cm, metav1.CreateOptions{})
		return err
	}, func(ctx context.Context) error {
		_, err := c.AppsV1().Deployments(kwokNS).Create(ctx, dep, metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("deploy kwok: %w", err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := c.AppsV1().Deployments(kwokNS).Get(ctx, kwokName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return d.Status.AvailableReplicas == 1, nil
	})
	if err != nil {
		return fmt.Errorf("kwok not available: %w", err)
	}
	return nil
}

// create runs the creations in order; an object that exists is kept.
func create(ctx context.Context, fns ...func(context.Context) error) error {
	for _, fn := range fns {
		if err := fn(ctx); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

// kwokNodes creates n fake nodes, tainted and labelled type=kwok, each with
// a /20 pod CIDR inside kind's 10.244.0.0/16 (the real node has
// 10.244.0.0/24), and waits until they are Ready.
func kwokNodes(ctx context.Context, c kubernetes.Interface, n int) ([]string, error) {
	if n > 15 {
		return nil, fmt.Errorf("at most 15 kwok nodes fit in 10.244.0.0/16 (%d asked)", n)
	}
	var names []string
	for i := range n {
		name := fmt.Sprintf("kwok-node-%d", i)
		names = append(names, name)
		cidr := fmt.Sprintf("10.244.%d.0/20", 16*(i+1))
		res := corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("1000"),
			corev1.ResourceMemory: resource.MustParse("4Ti"),
			corev1.ResourcePods:   *resource.NewQuantity(kwokPodsPerNode, resource.DecimalSI),
		}
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Annotations: map[string]string{kwokNodeAnno: "fake", "node.alpha.kubernetes.io/ttl": "0"},
				Labels:      map[string]string{"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
			},
			Spec: corev1.NodeSpec{
				PodCIDR: cidr, PodCIDRs: []string{cidr},
				Taints: []corev1.Taint{{Key: kwokNodeAnno, Value: "fake", Effect: corev1.TaintEffectNoSchedule}},
			},
			Status: corev1.NodeStatus{Capacity: res, Allocatable: res},
		}
		if _, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create node %s: %w", name, err)
		}
	}
	err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, name := range names {
			node, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil || !ready(node) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("kwok nodes not Ready: %w", err)
	}
	return names, nil
}

func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
