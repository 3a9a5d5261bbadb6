// Package manifests_test applies every shipped manifest to a real API server
// with server-side dry-run: the schema, defaulting and admission (Pod
// Security "restricted" included, where a namespace asks for it) must accept
// every object as kustomize renders it.
package manifests_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/k8secrets/k8secrets/internal/apitest"
)

func TestMain(m *testing.M) { os.Exit(apitest.Main(m)) }

// kustomize renders dir with the kubectl that `make test-assets` builds.
func kustomize(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	kubectl := filepath.Join(os.Getenv(apitest.AssetsEnv), "kubectl")
	var out, errb bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", dir)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, errb.String())
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(&out, 4096)
	var objs []*unstructured.Unstructured
	for {
		var u unstructured.Unstructured
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("decode %s: %v", dir, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, &u)
		}
	}
}

func TestManifestsDryRun(t *testing.T) {
	env := apitest.Shared(t)
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(env.Client.Discovery()))
	for _, dir := range []string{"base", "refresh", "verify", "examples", "demo", "watch", "watch-cluster"} {
		t.Run(dir, func(t *testing.T) {
			objs := kustomize(t, dir)
			if len(objs) == 0 {
				t.Fatalf("%s renders no objects", dir)
			}
			ns := env.Namespace(t) // for objects that name no namespace
			for _, o := range objs {
				m, err := mapper.RESTMapping(o.GroupVersionKind().GroupKind(), o.GroupVersionKind().Version)
				if err != nil {
					t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
				}
				var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
				if m.Scope.Name() == meta.RESTScopeNameNamespace {
					if o.GetNamespace() == "" {
						o.SetNamespace(ns)
					}
					ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
				}
				opts := metav1.ApplyOptions{FieldManager: "manifests-test", DryRun: []string{metav1.DryRunAll}}
				if o.GetKind() == "Namespace" {
					// Namespaced objects need their namespace for real.
					opts.DryRun = nil
					name := o.GetName()
					t.Cleanup(func() { _ = dyn.Resource(m.Resource).Delete(context.Background(), name, metav1.DeleteOptions{}) })
				}
				if _, err := ri.Apply(ctx, o.GetName(), o, opts); err != nil {
					t.Errorf("%s: server-side dry-run of %s %s/%s: %v", dir, o.GetKind(), o.GetNamespace(), o.GetName(), err)
				}
				if apierrors.IsForbidden(err) && strings.Contains(err.Error(), "PodSecurity") {
					t.Errorf("%s %s violates Pod Security", o.GetKind(), o.GetName())
				}
			}
		})
	}
}
