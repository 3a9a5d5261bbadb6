// Package secret loads the Secret to inject and decides whether it can be
// mounted as a volume. It reads key names and types only: values never leave
// this package, and nothing here formats them.
package secret

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ErrUnusable wraps every reason the Secret cannot be injected: exit code 3.
var ErrUnusable = errors.New("secret unusable")

// Info is what the rest of the Job may know about the Secret.
type Info struct {
	Namespace, Name string
	Type            corev1.SecretType
	Keys            int
	// Warnings are reasons to proceed with care (an immutable Secret).
	Warnings []string
}

// Load gets the Secret and checks it.
func Load(ctx context.Context, client kubernetes.Interface, namespace, name string) (Info, error) {
	s, err := client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return Info{}, fmt.Errorf("%w: secret %s/%s not found; create it first, or check --namespace and --secret", ErrUnusable, namespace, name)
	case apierrors.IsForbidden(err):
		return Info{}, fmt.Errorf("%w: get secret %s/%s is forbidden: grant verb \"get\" on resource \"secrets\" (resourceNames: [%s]) in namespace %s to this identity: %v",
			ErrUnusable, namespace, name, name, namespace, err)
	case err != nil:
		return Info{}, fmt.Errorf("get secret %s/%s: %w", namespace, name, err)
	}
	return Check(s)
}

// Check decides by type and content whether s can be mounted.
func Check(s *corev1.Secret) (Info, error) {
	ref := s.Namespace + "/" + s.Name
	info := Info{Namespace: s.Namespace, Name: s.Name, Type: s.Type, Keys: len(s.Data) + len(s.StringData)}
	if info.Type == "" {
		info.Type = corev1.SecretTypeOpaque
	}
	unusable := func(format string, a ...any) (Info, error) {
		return Info{}, fmt.Errorf("%w: secret %s: "+format, append([]any{ErrUnusable, ref}, a...)...)
	}
	switch info.Type {
	case corev1.SecretTypeServiceAccountToken:
		return unusable("type %s is refused: service-account tokens are projected by the kubelet; use a projected serviceAccountToken volume instead", info.Type)
	case corev1.SecretTypeDockerConfigJson, corev1.SecretTypeDockercfg:
		return unusable("type %s holds registry credentials: they belong in the pod's imagePullSecrets, not in a volume", info.Type)
	case corev1.SecretTypeTLS:
		for _, k := range []string{corev1.TLSCertKey, corev1.TLSPrivateKeyKey} {
			if _, ok := s.Data[k]; !ok {
				return unusable("type %s lacks the key %q; a TLS Secret needs %q and %q", info.Type, k, corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
			}
		}
	}
	if info.Keys == 0 {
		return unusable("it has no keys, so the volume would be empty; add data to it first")
	}
	if s.Immutable != nil && *s.Immutable {
		info.Warnings = append(info.Warnings, fmt.Sprintf("secret %s is immutable: it is mounted now, but later updates cannot reach the pods (an immutable Secret can only be replaced by a new one)", ref))
	}
	return info, nil
}
