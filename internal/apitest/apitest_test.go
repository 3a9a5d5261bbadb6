package apitest_test

import (
	"context"
	"os"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/k8secrets/k8secrets/internal/apitest"
)

func TestMain(m *testing.M) { os.Exit(apitest.Main(m, apitest.WithControllerManager())) }

func TestStartAnswers(t *testing.T) {
	env := apitest.Start(t)
	v, err := env.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("ServerVersion: %v", err)
	}
	if v.Major != "1" {
		t.Errorf("ServerVersion().Major = %q; want 1 (binaries built without the version stamp?)", v.Major)
	}
	ns := env.Namespace(t)
	// Without the controller manager Namespace creates the default
	// ServiceAccount itself, so pods are admitted.
	if _, err := env.Client.CoreV1().Pods(ns).Create(context.Background(), pod("p"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/p: %v", ns, err)
	}
}

func TestRBACDeniesUserWithoutRole(t *testing.T) {
	env := apitest.Shared(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	as, err := kubernetes.NewForConfig(env.As("alice", "team-a"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = as.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("list secrets in %s as alice without a role: err = %v; want Forbidden", ns, err)
	}

	_, err = env.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "read-secrets"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"list"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "team-a"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "read-secrets"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "team-a"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := as.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list secrets in %s as alice in group team-a with a role: %v", ns, err)
	}
	if _, err := as.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets in default as alice: err = %v; want Forbidden", err)
	}
}

func TestServerSideDryRunDoesNotPersist(t *testing.T) {
	env := apitest.Shared(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "s"},
		StringData: map[string]string{"key": "value"},
	}
	got, err := env.Client.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatalf("dry-run create secret %s/s: %v", ns, err)
	}
	if got.Name != "s" {
		t.Errorf("dry-run create returned name %q; want s", got.Name)
	}
	if _, err := env.Client.CoreV1().Secrets(ns).Get(ctx, "s", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get secret %s/s after dry-run create: err = %v; want NotFound", ns, err)
	}
}

func TestControllerManagerCreatesPods(t *testing.T) {
	env := apitest.Shared(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	replicas := int32(2)
	labels := map[string]string{"app": "web"}
	_, err := env.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       pod("").Spec,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create deployment %s/web: %v", ns, err)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		pods, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err
		}
		return len(pods.Items) == int(replicas), nil
	})
	if err != nil {
		t.Fatalf("wait for %d pods of deployment %s/web: %v", replicas, ns, err)
	}
	rs, err := env.Client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(rs.Items) != 1 {
		t.Fatalf("replicasets in %s: %d, %v; want 1", ns, len(rs.Items), err)
	}
}

func pod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "app:test"}},
		},
	}
}
