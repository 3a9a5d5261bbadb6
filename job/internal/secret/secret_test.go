package secret

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

const value = "hunter2-do-not-print"

func sec(typ corev1.SecretType, keys ...string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-creds", Namespace: "ns"}, Type: typ, Data: map[string][]byte{}}
	for _, k := range keys {
		s.Data[k] = []byte(value)
	}
	return s
}

func TestCheck(t *testing.T) {
	immutable := sec(corev1.SecretTypeOpaque, "password")
	immutable.Immutable = ptr.To(true)
	for _, tc := range []struct {
		name    string
		s       *corev1.Secret
		wantErr string // empty: usable
		warn    string
	}{
		{"opaque", sec(corev1.SecretTypeOpaque, "password"), "", ""},
		{"untyped", sec("", "password"), "", ""},
		{"basic-auth", sec(corev1.SecretTypeBasicAuth, "username", "password"), "", ""},
		{"ssh-auth", sec(corev1.SecretTypeSSHAuth, "ssh-privatekey"), "", ""},
		{"tls", sec(corev1.SecretTypeTLS, "tls.crt", "tls.key"), "", ""},
		{"tls without key", sec(corev1.SecretTypeTLS, "tls.crt"), `lacks the key "tls.key"`, ""},
		{"tls without cert", sec(corev1.SecretTypeTLS, "tls.key"), `lacks the key "tls.crt"`, ""},
		{"service-account token", sec(corev1.SecretTypeServiceAccountToken, "token"), "service-account tokens", ""},
		{"dockerconfigjson", sec(corev1.SecretTypeDockerConfigJson, ".dockerconfigjson"), "imagePullSecrets", ""},
		{"dockercfg", sec(corev1.SecretTypeDockercfg, ".dockercfg"), "imagePullSecrets", ""},
		{"empty", sec(corev1.SecretTypeOpaque), "no keys", ""},
		{"immutable", immutable, "", "immutable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := Check(tc.s)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Check(%s) = %v; want usable", tc.name, err)
				}
				if tc.warn != "" && (len(info.Warnings) != 1 || !strings.Contains(info.Warnings[0], tc.warn)) {
					t.Errorf("Check(%s) warnings = %q; want one about %q", tc.name, info.Warnings, tc.warn)
				}
				if tc.warn == "" && len(info.Warnings) > 0 {
					t.Errorf("Check(%s) warnings = %q; want none", tc.name, info.Warnings)
				}
				return
			}
			if !errors.Is(err, ErrUnusable) || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "ns/db-creds") {
				t.Fatalf("Check(%s) = %v; want ErrUnusable naming ns/db-creds and %q", tc.name, err, tc.wantErr)
			}
			if strings.Contains(err.Error(), value) {
				t.Fatalf("Check(%s) error contains the secret value", tc.name)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(sec(corev1.SecretTypeOpaque, "password"))
	if _, err := Load(ctx, client, "ns", "db-creds"); err != nil {
		t.Fatalf("Load(existing) = %v", err)
	}
	_, err := Load(ctx, client, "ns", "nope")
	if !errors.Is(err, ErrUnusable) || !strings.Contains(err.Error(), "secret ns/nope not found") {
		t.Fatalf("Load(missing) = %v; want ErrUnusable 'secret ns/nope not found'", err)
	}
	client.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "db-creds", errors.New("no RBAC"))
	})
	_, err = Load(ctx, client, "ns", "db-creds")
	if !errors.Is(err, ErrUnusable) || !strings.Contains(err.Error(), `grant verb "get" on resource "secrets"`) {
		t.Fatalf("Load(forbidden) = %v; want ErrUnusable naming the verb and resource", err)
	}
}
