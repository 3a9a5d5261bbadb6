// Package charts_test checks the Helm chart charts/k8secrets with the helm
// CLI that `make helm` builds (K8SECRETS_HELM names it): helm lint and helm
// template of every values file under k8secrets/ci against a golden file
// (-update rewrites them), the rendered Roles against the kustomize
// manifests they must equal, the schema's refusals, and a server-side
// dry-run of the rendered objects on a real API server (the PodMonitor and
// PrometheusRule against the Prometheus Operator's CRDs, read from its Go
// module at the version hack/versions.mk pins).
package charts_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/k8secrets/k8secrets/internal/apitest"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func TestMain(m *testing.M) { os.Exit(apitest.Main(m)) }

// chart is the chart's folder, relative to this package.
const chart = "k8secrets"

// release and namespace of every rendering: the goldens depend on them.
const (
	release   = "k8secrets"
	namespace = "shop"
)

// helmBin returns the helm CLI, or skips the test without one (fails it in
// CI, where `make unit` builds it).
func helmBin(t *testing.T) string {
	t.Helper()
	h := os.Getenv("K8SECRETS_HELM")
	if h == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("K8SECRETS_HELM is not set and CI=true: run `make chart-test` (it builds helm and sets it)")
		}
		t.Skip("no helm: K8SECRETS_HELM is not set; run `make chart-test` (it builds helm and sets it)")
	}
	return h
}

// helm runs the helm CLI with a private home, so no user's repositories,
// plugins or kubeconfig take part.
func helm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helmBin(t), args...)
	cmd.Env = []string{
		"HOME=" + home, "PATH=" + os.Getenv("PATH"),
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
		"KUBECONFIG=" + filepath.Join(home, "no-kubeconfig"),
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// examples lists the chart's example values files.
func examples(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chart, "ci", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no example values under %s/ci", chart)
	}
	return files
}

// render is `helm template` of the chart with values files and --set
// arguments; it fails the test if helm does.
func render(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := helm(t, append([]string{"template", release, chart, "-n", namespace}, args...)...)
	if err != nil {
		t.Fatalf("helm template %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func TestChartExamplesLintAndGolden(t *testing.T) {
	for _, values := range examples(t) {
		name := strings.TrimSuffix(filepath.Base(values), ".yaml")
		t.Run(name, func(t *testing.T) {
			if out, errOut, err := helm(t, "lint", "--strict", chart, "-n", namespace, "-f", values); err != nil {
				t.Fatalf("helm lint --strict -f %s: %v\n%s%s", values, err, out, errOut)
			}
			got := render(t, "-f", values)
			golden := filepath.Join("testdata", name+".golden.yaml")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v; run `make chart-test UPDATE=1` to write it", err)
			}
			if got != string(want) {
				t.Errorf("helm template -f %s differs from %s (rerun with UPDATE=1 if the change is meant):\n%s", values, golden, lineDiff(string(want), got))
			}
		})
	}
	// A golden without its values file is a leftover.
	goldens, _ := filepath.Glob(filepath.Join("testdata", "*.golden.yaml"))
	for _, g := range goldens {
		name := strings.TrimSuffix(filepath.Base(g), ".golden.yaml")
		if _, err := os.Stat(filepath.Join(chart, "ci", name+".yaml")); err != nil {
			t.Errorf("%s has no values file %s/ci/%s.yaml: delete it", g, chart, name)
		}
	}
}

// lineDiff shows the first lines where a and b differ.
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out strings.Builder
	shown := 0
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out.WriteString("line " + strconv.Itoa(i+1) + ":\n- " + x + "\n+ " + y + "\n")
			if shown++; shown == 10 {
				break
			}
		}
	}
	return out.String()
}

// objects decodes a multi-document YAML stream.
func objects(t *testing.T, text string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(text), 4096)
	var objs []*unstructured.Unstructured
	for {
		var u unstructured.Unstructured
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("decode the rendered chart: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, &u)
		}
	}
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, ns, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == ns && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("the rendered chart has no %s %s/%s", kind, ns, name)
	return nil
}

// rulesOf reads the rules of a Role or ClusterRole.
func rulesOf(t *testing.T, o *unstructured.Unstructured) []rbacv1.PolicyRule {
	t.Helper()
	var r rbacv1.ClusterRole // the same rules field as a Role
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &r); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return r.Rules
}

func fileRules(t *testing.T, path string) []rbacv1.PolicyRule {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r rbacv1.Role
	if err := yaml.UnmarshalStrict(b, &r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return r.Rules
}

// withSecrets returns rules with the Secret rule's resourceNames replaced.
func withSecrets(rules []rbacv1.PolicyRule, names ...string) []rbacv1.PolicyRule {
	out := make([]rbacv1.PolicyRule, len(rules))
	for i, r := range rules {
		r = *r.DeepCopy()
		if len(r.Resources) == 1 && r.Resources[0] == "secrets" {
			r.ResourceNames = names
		}
		out[i] = r
	}
	return out
}

// The chart's Roles grant exactly what the kustomize manifests grant (the
// Job's Role is proven enough and no more against a real API server by
// job/role_apiserver_test.go), with the Secrets of the values by name.
func TestChartRolesMatchManifests(t *testing.T) {
	base := fileRules(t, filepath.Join("..", "manifests", "base", "role.yaml"))
	refresh := fileRules(t, filepath.Join("..", "manifests", "refresh", "role.yaml"))

	objs := objects(t, render(t, "-f", filepath.Join(chart, "ci", "namespaced-values.yaml")))
	for _, c := range []struct {
		ns      string
		secrets []string
	}{{"shop", []string{"db-creds", "api-token"}}, {"billing", []string{"stripe-key"}}} {
		got := rulesOf(t, find(t, objs, "Role", c.ns, "k8secrets-job"))
		if want := withSecrets(base, c.secrets...); !reflect.DeepEqual(got, want) {
			t.Errorf("Role %s/k8secrets-job rules = %+v; want those of manifests/base/role.yaml with the Secrets %v: %+v", c.ns, got, c.secrets, want)
		}
		if got := rulesOf(t, find(t, objs, "Role", c.ns, "k8secrets-refresh")); !reflect.DeepEqual(got, refresh) {
			t.Errorf("Role %s/k8secrets-refresh rules = %+v; want those of manifests/refresh/role.yaml: %+v", c.ns, got, refresh)
		}
	}

	// inject.secret joins the release namespace's Role.
	objs = objects(t, render(t, "-f", filepath.Join(chart, "ci", "inject-values.yaml")))
	if got, want := rulesOf(t, find(t, objs, "Role", namespace, "k8secrets-job")), withSecrets(base, "db-creds"); !reflect.DeepEqual(got, want) {
		t.Errorf("Role %s/k8secrets-job rules = %+v; want %+v", namespace, got, want)
	}

	objs = objects(t, render(t, "-f", filepath.Join(chart, "ci", "clusterwide-values.yaml")))
	if got, want := rulesOf(t, find(t, objs, "ClusterRole", "", "k8secrets-job")), withSecrets(base, "db-creds"); !reflect.DeepEqual(got, want) {
		t.Errorf("ClusterRole k8secrets-job rules = %+v; want %+v", got, want)
	}
	if got := rulesOf(t, find(t, objs, "ClusterRole", "", "k8secrets-refresh")); !reflect.DeepEqual(got, refresh) {
		t.Errorf("ClusterRole k8secrets-refresh rules = %+v; want %+v", got, refresh)
	}
	for _, o := range objs {
		// The watch's Lease is namespaced: its Role stays in the release
		// namespace, as in manifests/watch-cluster.
		if (o.GetKind() == "Role" || o.GetKind() == "RoleBinding") && (o.GetName() != "k8secrets-watch" || o.GetNamespace() != namespace) {
			t.Errorf("cluster-wide, the chart renders %s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
		}
	}
}

// The watch's Roles are manifests/watch/role.yaml's in each namespace it
// serves and in the release namespace (its Lease); cluster-wide, its
// ClusterRole is manifests/watch-cluster/clusterrole.yaml's, and it is
// rendered only then.
func TestChartWatchRolesMatchManifests(t *testing.T) {
	role := fileRules(t, filepath.Join("..", "manifests", "watch", "role.yaml"))
	clusterRole := fileRules(t, filepath.Join("..", "manifests", "watch-cluster", "clusterrole.yaml"))

	objs := objects(t, render(t, "-f", filepath.Join(chart, "ci", "watch-values.yaml")))
	for _, ns := range []string{"shop", "billing"} {
		if got := rulesOf(t, find(t, objs, "Role", ns, "k8secrets-watch")); !reflect.DeepEqual(got, role) {
			t.Errorf("Role %s/k8secrets-watch rules = %+v; want those of manifests/watch/role.yaml: %+v", ns, got, role)
		}
		checkWatchBinding(t, find(t, objs, "RoleBinding", ns, "k8secrets-watch"), "Role")
	}
	for _, o := range objs {
		if o.GetKind() == "ClusterRole" || o.GetKind() == "ClusterRoleBinding" {
			t.Errorf("namespaced, the chart renders %s %s", o.GetKind(), o.GetName())
		}
	}

	// Serving another namespace than the release's, the release namespace
	// still gets the Role, for the Lease.
	objs = objects(t, render(t, "--set", "namespaces[0].name=shop", "--set", "namespaces[0].secrets[0]=s",
		"--set", "watch.enabled=true", "--set", "watch.namespaces[0]=billing"))
	for _, ns := range []string{"shop", "billing"} {
		if got := rulesOf(t, find(t, objs, "Role", ns, "k8secrets-watch")); !reflect.DeepEqual(got, role) {
			t.Errorf("Role %s/k8secrets-watch rules = %+v; want those of manifests/watch/role.yaml: %+v", ns, got, role)
		}
	}

	objs = objects(t, render(t, "-f", filepath.Join(chart, "ci", "clusterwide-values.yaml")))
	if got := rulesOf(t, find(t, objs, "ClusterRole", "", "k8secrets-watch")); !reflect.DeepEqual(got, clusterRole) {
		t.Errorf("ClusterRole k8secrets-watch rules = %+v; want those of manifests/watch-cluster/clusterrole.yaml: %+v", got, clusterRole)
	}
	checkWatchBinding(t, find(t, objs, "ClusterRoleBinding", "", "k8secrets-watch"), "ClusterRole")
	if got := rulesOf(t, find(t, objs, "Role", namespace, "k8secrets-watch")); !reflect.DeepEqual(got, role) {
		t.Errorf("Role %s/k8secrets-watch rules = %+v; want those of manifests/watch/role.yaml: %+v", namespace, got, role)
	}
}

// checkWatchBinding checks a binding gives its role to the watch's
// ServiceAccount of the release namespace.
func checkWatchBinding(t *testing.T, o *unstructured.Unstructured, roleKind string) {
	t.Helper()
	var b rbacv1.RoleBinding // the same fields as a ClusterRoleBinding
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &b); err != nil {
		t.Fatal(err)
	}
	want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "k8secrets-watch", Namespace: namespace}}
	if b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: roleKind, Name: "k8secrets-watch"}) || !reflect.DeepEqual(b.Subjects, want) {
		t.Errorf("%s %s/%s binds %+v to %+v; want %s k8secrets-watch to %+v", o.GetKind(), o.GetNamespace(), o.GetName(), b.RoleRef, b.Subjects, roleKind, want)
	}
}

// The watch's Deployment is manifests/watch/deployment.yaml's: the same pod
// spec but for the image, the resources and the arguments the values set
// (those of the manifest first), in the release namespace.
func TestChartWatchDeploymentMatchesManifests(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "manifests", "watch", "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want appsv1.Deployment
	if err := yaml.UnmarshalStrict(b, &want); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		values string
		args   []string
	}{
		{"watch-values.yaml", []string{"--namespace=shop,billing", "--lease-namespace=shop", "--min-interval=30s", "--breaker-changes=5", "--breaker-window=10m", "--verify-timeout=3m"}},
		{"clusterwide-values.yaml", []string{"--all-namespaces", "--lease-namespace=shop", "--min-interval=10s", "--breaker-changes=10", "--breaker-window=5m", "--verify-timeout=2m"}},
	} {
		t.Run(c.values, func(t *testing.T) {
			o := find(t, objects(t, render(t, "-f", filepath.Join(chart, "ci", c.values))), "Deployment", namespace, "k8secrets-watch")
			var got appsv1.Deployment
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &got); err != nil {
				t.Fatal(err)
			}
			if *got.Spec.Replicas != *want.Spec.Replicas {
				t.Errorf("replicas = %d; want %d", *got.Spec.Replicas, *want.Spec.Replicas)
			}
			gc, wc := got.Spec.Template.Spec.Containers[0], want.Spec.Template.Spec.Containers[0]
			if wantArgs := append(append([]string{}, wc.Args...), c.args...); !reflect.DeepEqual(gc.Args, wantArgs) {
				t.Errorf("args = %q; want %q", gc.Args, wantArgs)
			}
			if gc.Image != "ghcr.io/k8secrets/k8secrets-job:latest" {
				t.Errorf("image = %q; want that of image: ghcr.io/k8secrets/k8secrets-job:latest", gc.Image)
			}
			if !reflect.DeepEqual(gc.Resources, wc.Resources) {
				t.Errorf("resources = %+v; want the manifest's defaults %+v", gc.Resources, wc.Resources)
			}
			gs, ws := got.Spec.Template.Spec.DeepCopy(), want.Spec.Template.Spec.DeepCopy()
			for _, s := range []*corev1.PodSpec{gs, ws} {
				s.Containers[0].Args, s.Containers[0].Image = nil, ""
			}
			if !reflect.DeepEqual(gs, ws) {
				t.Errorf("pod spec = %+v; want that of manifests/watch/deployment.yaml: %+v", gs, ws)
			}
			for k, v := range want.Spec.Template.Labels {
				if got.Spec.Template.Labels[k] != v || got.Spec.Selector.MatchLabels[k] != v {
					t.Errorf("pod template labels %v, selector %v; want %s=%s in both", got.Spec.Template.Labels, got.Spec.Selector.MatchLabels, k, v)
				}
			}
		})
	}
}

// The chart's PrometheusRule is manifests/monitoring's.
func TestChartPrometheusRuleMatchesManifests(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "manifests", "monitoring", "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want unstructured.Unstructured
	if err := yaml.Unmarshal(b, &want.Object); err != nil {
		t.Fatal(err)
	}
	objs := objects(t, render(t, "-f", filepath.Join(chart, "ci", "clusterwide-values.yaml")))
	got := find(t, objs, "PrometheusRule", namespace, "k8secrets-agent")
	if !reflect.DeepEqual(got.Object["spec"], want.Object["spec"]) {
		t.Errorf("PrometheusRule spec = %v; want that of manifests/monitoring/prometheusrule.yaml (copy it to %s/files/prometheusrule.yaml): %v", got.Object["spec"], chart, want.Object["spec"])
	}
}

// The chart's dashboard ConfigMap carries manifests/monitoring's dashboard,
// byte for byte.
func TestChartDashboardMatchesManifests(t *testing.T) {
	want, err := os.ReadFile(filepath.Join("..", "manifests", "monitoring", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, render(t, "-f", filepath.Join(chart, "ci", "watch-values.yaml")))
	cm := find(t, objs, "ConfigMap", namespace, "k8secrets-dashboard")
	if l := cm.GetLabels()["grafana_dashboard"]; l != "1" {
		t.Errorf("dashboard ConfigMap label grafana_dashboard = %q; want \"1\" (Grafana's sidecar selects by it)", l)
	}
	got, _, _ := unstructured.NestedString(cm.Object, "data", "grafana-dashboard.json")
	if strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
		t.Errorf("the chart's dashboard differs from manifests/monitoring/grafana-dashboard.json: copy it to %s/files/grafana-dashboard.json", chart)
	}
}

// The schema and the chart's checks refuse bad values, each with a message
// that names the value. Each case's good twin renders, so the refusal is the
// bad value's.
func TestChartRefusesBadValues(t *testing.T) {
	inject := []string{"--set", "inject.enabled=true", "--set", "inject.selector=app=web", "--set", "inject.secret=db-creds"}
	cases := []struct {
		name      string
		bad, good []string
		want      []string
	}{
		{"misspelt top-level key", []string{"--set", "namespace[0].name=shop"}, []string{"--set", "namespaces[0].name=shop", "--set", "namespaces[0].secrets[0]=s"},
			[]string{"additional properties", "namespace"}},
		{"misspelt nested key", append(inject, "--set", "inject.selctor=app=web"), inject,
			[]string{"additional properties", "selctor"}},
		{"misspelt key in a list item", []string{"--set", "namespaces[0].name=shop", "--set", "namespaces[0].secret[0]=s"}, []string{"--set", "namespaces[0].name=shop", "--set", "namespaces[0].secrets[0]=s"},
			[]string{"secret"}},
		{"string for a boolean", append(inject, "--set-string", "refresh.enabled=yes"), append(inject, "--set", "refresh.enabled=true"),
			[]string{"refresh", "enabled", "boolean"}},
		{"string for an integer", append(inject, "--set-string", "inject.maxParallel=two"), append(inject, "--set", "inject.maxParallel=2"),
			[]string{"maxParallel", "integer"}},
		{"object for a list", []string{"--set", "namespaces.shop=db-creds"}, []string{"--set", "namespaces[0].name=shop", "--set", "namespaces[0].secrets[0]=db-creds"},
			[]string{"namespaces", "array"}},
		{"duration without a unit", append(inject, "--set-string", "inject.timeout=300"), append(inject, "--set", "inject.timeout=300s"),
			[]string{"timeout"}},
		{"unknown reload", append(inject, "--set", "inject.reload=reboot"), append(inject, "--set", "inject.reload=signal:SIGHUP"),
			[]string{"reload"}},
		{"no Secret for a Role", []string{"--set", "namespaces[0].name=shop", "--set", "namespaces[0].secrets=null"}, []string{"--set", "namespaces[0].name=shop", "--set", "namespaces[0].secrets[0]=s"},
			[]string{"secrets"}},
		{"release namespace with no Secret", nil, []string{"--set", "inject.secret=db-creds", "--set", "inject.enabled=true", "--set", "inject.selector=a=b"},
			[]string{"lists no Secret", "reads Secrets by name only"}},
		{"inject without a selector", []string{"--set", "inject.enabled=true", "--set", "inject.secret=db-creds"}, inject,
			[]string{"inject.selector"}},
		{"inject outside the listed namespaces", append(inject, "--set", "namespaces[0].name=other", "--set", "namespaces[0].secrets[0]=s"), append(inject, "--set", "namespaces[0].name=shop", "--set", "namespaces[0].secrets[0]=s"),
			[]string{"release namespace", `"shop"`}},
		{"cluster-wide with no Secret", []string{"--set", "clusterWide.enabled=true"}, []string{"--set", "clusterWide.enabled=true", "--set", "clusterWide.secrets[0]=db-creds"},
			[]string{"clusterWide.secrets"}},
		{"cluster-wide and namespaces", []string{"--set", "clusterWide.enabled=true", "--set", "clusterWide.secrets[0]=s", "--set", "namespaces[0].name=shop", "--set", "namespaces[0].secrets[0]=s"}, []string{"--set", "clusterWide.enabled=true", "--set", "clusterWide.secrets[0]=s"},
			[]string{"exclude each other"}},
		{"ServiceAccount subject without a namespace", append(inject, "--set", "refresh.enabled=true", "--set", "refresh.subjects[0].kind=ServiceAccount", "--set", "refresh.subjects[0].name=ci"),
			append(inject, "--set", "refresh.enabled=true", "--set", "refresh.subjects[0].kind=ServiceAccount", "--set", "refresh.subjects[0].name=ci", "--set", "refresh.subjects[0].namespace=ci"),
			[]string{"namespace"}},
		{"misspelt watch key", append(inject, "--set", "watch.enabled=true", "--set", "watch.minInteval=30s"), append(inject, "--set", "watch.enabled=true", "--set", "watch.minInterval=30s"),
			[]string{"additional properties", "minInteval"}},
		{"string for watch.enabled", append(inject, "--set-string", "watch.enabled=yes"), append(inject, "--set", "watch.enabled=true"),
			[]string{"watch", "enabled", "boolean"}},
		{"string for watch.breakerChanges", append(inject, "--set", "watch.enabled=true", "--set-string", "watch.breakerChanges=ten"), append(inject, "--set", "watch.enabled=true", "--set", "watch.breakerChanges=10"),
			[]string{"breakerChanges", "integer"}},
		{"no watch replica", append(inject, "--set", "watch.enabled=true", "--set", "watch.replicas=0"), append(inject, "--set", "watch.enabled=true", "--set", "watch.replicas=1"),
			[]string{"replicas"}},
		{"watch duration without a unit", append(inject, "--set", "watch.enabled=true", "--set-string", "watch.verifyTimeout=120"), append(inject, "--set", "watch.enabled=true", "--set", "watch.verifyTimeout=120s"),
			[]string{"verifyTimeout"}},
		{"watch.namespaces not a list", append(inject, "--set", "watch.enabled=true", "--set", "watch.namespaces=shop"), append(inject, "--set", "watch.enabled=true", "--set", "watch.namespaces[0]=shop"),
			[]string{"namespaces", "array"}},
		{"bad watch namespace name", append(inject, "--set", "watch.enabled=true", "--set", "watch.namespaces[0]=Shop_1"), append(inject, "--set", "watch.enabled=true", "--set", "watch.namespaces[0]=shop-1"),
			[]string{"namespaces"}},
		{"misspelt watch image key", append(inject, "--set", "watch.enabled=true", "--set", "watch.image.repo=x"), append(inject, "--set", "watch.enabled=true", "--set", "watch.image.repository=x"),
			[]string{"additional properties", "repo"}},
		{"watch.namespaces and cluster-wide", []string{"--set", "clusterWide.enabled=true", "--set", "clusterWide.secrets[0]=s", "--set", "watch.enabled=true", "--set", "watch.namespaces[0]=shop"},
			[]string{"--set", "clusterWide.enabled=true", "--set", "clusterWide.secrets[0]=s", "--set", "watch.enabled=true"},
			[]string{"watch.namespaces and clusterWide.enabled"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := []string{"template", release, chart, "-n", namespace}
			if _, errOut, err := helm(t, append(base, c.good...)...); err != nil {
				t.Fatalf("the good twin %v fails: %v\n%s", c.good, err, errOut)
			}
			out, errOut, err := helm(t, append(base, c.bad...)...)
			if err == nil {
				t.Fatalf("helm template %v rendered:\n%s\nwant a refusal naming %q", c.bad, out, c.want)
			}
			for _, w := range c.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("helm template %v: %s\nwant a message containing %q", c.bad, errOut, w)
				}
			}
		})
	}
}

// monitoringCRDs returns the PodMonitor and PrometheusRule CRDs of the
// Prometheus Operator at PROMETHEUS_OPERATOR_VERSION (hack/versions.mk),
// from its Go module: the module proxy serves it, so no registry or release
// download is needed.
func monitoringCRDs(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "hack", "versions.mk"))
	if err != nil {
		t.Fatal(err)
	}
	version := ""
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":="); ok && strings.TrimSpace(k) == "PROMETHEUS_OPERATOR_VERSION" {
			version = strings.TrimSpace(v)
		}
	}
	if version == "" {
		t.Fatal("hack/versions.mk sets no PROMETHEUS_OPERATOR_VERSION")
	}
	mod := "github.com/prometheus-operator/prometheus-operator@" + version
	cmd := exec.Command("go", "mod", "download", "-json", mod)
	cmd.Dir = t.TempDir() // outside the main module: its go.mod is not touched
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s%s", mod, err, out, stderrOf(err))
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", mod, err, info.Error)
	}
	var crds []*unstructured.Unstructured
	for _, f := range []string{"monitoring.coreos.com_podmonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml"} {
		b, err := os.ReadFile(filepath.Join(info.Dir, "example", "prometheus-operator-crd", f))
		if err != nil {
			t.Fatal(err)
		}
		crds = append(crds, objects(t, string(b))...)
	}
	return crds
}

func stderrOf(err error) string {
	var x *exec.ExitError
	if errors.As(err, &x) {
		return string(x.Stderr)
	}
	return ""
}

// A real API server accepts every object the examples render
// (server-side dry-run with strict field validation: schema, unknown
// fields, defaulting, RBAC's escalation check), the PodMonitor and the
// PrometheusRule against the Prometheus Operator's own CRDs.
func TestAPIChartDryRun(t *testing.T) {
	helmBin(t)
	env := apitest.Shared(t)
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, crd := range monitoringCRDs(t) {
		if _, err := dyn.Resource(crdGVR).Apply(ctx, crd.GetName(), crd, metav1.ApplyOptions{FieldManager: "chart-test", Force: true}); err != nil {
			t.Fatalf("create CRD %s: %v", crd.GetName(), err)
		}
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			got, err := dyn.Resource(crdGVR).Get(ctx, crd.GetName(), metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, c := range conds {
				if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("CRD %s not established: %v", crd.GetName(), err)
		}
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(env.Client.Discovery()))
	// The examples name these namespaces; they must exist for a dry-run.
	for _, ns := range []string{namespace, "billing"} {
		_, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	kinds := map[string]bool{}
	for _, values := range examples(t) {
		t.Run(filepath.Base(values), func(t *testing.T) {
			for _, o := range objects(t, render(t, "-f", values)) {
				kinds[o.GetKind()] = true
				m, err := mapper.RESTMapping(o.GroupVersionKind().GroupKind(), o.GroupVersionKind().Version)
				if err != nil {
					t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
				}
				var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
				if m.Scope.Name() == meta.RESTScopeNameNamespace {
					if o.GetNamespace() == "" {
						t.Errorf("%s %s names no namespace: helm would put it in the kubeconfig's, not the release's", o.GetKind(), o.GetName())
						continue
					}
					ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
				}
				// Apply's field validation is strict by default: an unknown
				// or duplicate field is an error, not a warning.
				opts := metav1.ApplyOptions{FieldManager: "chart-test", DryRun: []string{metav1.DryRunAll}}
				if _, err := ri.Apply(ctx, o.GetName(), o, opts); err != nil {
					t.Errorf("server-side dry-run of %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
				}
			}
		})
	}
	for _, k := range []string{"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Job", "PodMonitor", "PrometheusRule", "Deployment"} {
		if !kinds[k] {
			t.Errorf("no example renders a %s: add one under %s/ci", k, chart)
		}
	}
}

// The chart's RBAC on a real API server, asked with SubjectAccessReviews:
// by default each namespace's ServiceAccount may do the Job's work in its
// own namespace only and read only the Secrets listed; cluster-wide only
// when clusterWide.enabled says so, and still only the Secrets listed.
func TestAPIChartRBACScope(t *testing.T) {
	helmBin(t)
	env := apitest.Shared(t)
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(env.Client.Discovery()))
	// apply creates the rendered RBAC objects for real, and deletes them
	// after the test.
	apply := func(t *testing.T, text string) {
		t.Helper()
		for _, o := range objects(t, text) {
			if o.GetAPIVersion() != "v1" && o.GroupVersionKind().Group != "rbac.authorization.k8s.io" {
				continue
			}
			ns := o.GetNamespace()
			if ns != "" {
				_, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
				if err != nil && !apierrors.IsAlreadyExists(err) {
					t.Fatal(err)
				}
			}
			m, err := mapper.RESTMapping(o.GroupVersionKind().GroupKind(), o.GroupVersionKind().Version)
			if err != nil {
				t.Fatal(err)
			}
			ri := dyn.Resource(m.Resource).Namespace(ns)
			if ns == "" {
				ri = dyn.Resource(m.Resource)
			}
			if _, err := ri.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "chart-test"}); err != nil {
				t.Fatalf("apply %s %s/%s: %v", o.GetKind(), ns, o.GetName(), err)
			}
			name := o.GetName()
			t.Cleanup(func() { _ = ri.Delete(context.Background(), name, metav1.DeleteOptions{}) })
		}
	}
	type access struct {
		sa        string // NS (the ServiceAccount NS/k8secrets-job) or NS:NAME
		verb, res string // res: resource[/subresource]
		group, ns string
		name      string
		want      bool
	}
	check := func(t *testing.T, cases []access) {
		t.Helper()
		// The allowed first: each waits until the authorizer's cache has
		// the objects it needs, so that the refusals after them are
		// refusals of the objects, not of a cache that lags behind.
		sort.SliceStable(cases, func(i, j int) bool { return cases[i].want && !cases[j].want })
		for _, c := range cases {
			res, sub, _ := strings.Cut(c.res, "/")
			if !strings.Contains(c.sa, ":") {
				c.sa += ":k8secrets-job"
			}
			saNS, _, _ := strings.Cut(c.sa, ":")
			sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User:   "system:serviceaccount:" + c.sa,
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + saNS, "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: c.ns, Verb: c.verb, Group: c.group,
					Resource: res, Subresource: sub, Name: c.name}}}
			// RBAC objects reach the authorizer's cache shortly after
			// they are written: wait for the expected answer, then say
			// what it was.
			var got bool
			_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
				r, err := env.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
				if err != nil {
					return false, err
				}
				got = r.Status.Allowed
				return got == c.want, nil
			})
			if got != c.want {
				t.Errorf("can %s %s %s %q in namespace %q = %t; want %t", c.sa, c.verb, c.res, c.name, c.ns, got, c.want)
			}
		}
	}

	t.Run("namespaced", func(t *testing.T) {
		apply(t, render(t, "-f", filepath.Join(chart, "ci", "namespaced-values.yaml")))
		check(t, []access{
			{"shop", "get", "secrets", "", "shop", "db-creds", true},
			{"shop", "get", "secrets", "", "shop", "api-token", true},
			{"shop", "get", "secrets", "", "shop", "stripe-key", false},
			{"shop", "list", "secrets", "", "shop", "", false},
			{"shop", "patch", "deployments", "apps", "shop", "web", true},
			{"shop", "update", "deployments", "apps", "shop", "web", false},
			{"shop", "create", "pods/eviction", "", "shop", "web-1", true},
			// Patching pods is the refresh Role's, bound to ci:deployer.
			{"shop", "patch", "pods", "", "shop", "web-1", false},
			{"ci:deployer", "patch", "pods", "", "shop", "web-1", true},
			{"ci:deployer", "patch", "pods", "", "billing", "web-1", true},
			{"ci:deployer", "get", "secrets", "", "shop", "db-creds", false},
			{"shop", "patch", "deployments", "apps", "billing", "web", false},
			{"shop", "get", "secrets", "", "billing", "stripe-key", false},
			{"billing", "get", "secrets", "", "billing", "stripe-key", true},
			{"billing", "patch", "deployments", "apps", "billing", "web", true},
			{"billing", "patch", "deployments", "apps", "shop", "web", false},
		})
	})
	t.Run("watch", func(t *testing.T) {
		// Served: shop (the release namespace, its Lease) and billing.
		apply(t, render(t, "-f", filepath.Join(chart, "ci", "watch-values.yaml")))
		w := "shop:k8secrets-watch"
		check(t, []access{
			{w, "watch", "secrets", "", "billing", "", true},
			{w, "list", "secrets", "", "shop", "", true},
			{w, "get", "secrets", "", "shop", "db-creds", false},
			{w, "patch", "pods", "", "billing", "web-1", true},
			{w, "patch", "deployments", "apps", "billing", "web", true},
			{w, "update", "deployments", "apps", "billing", "web", false},
			{w, "update", "leases", "coordination.k8s.io", "shop", "k8secrets-watch", true},
			{w, "delete", "leases", "coordination.k8s.io", "shop", "k8secrets-watch", false},
			{w, "list", "secrets", "", "other", "", false},
			{w, "patch", "pods", "", "other", "web-1", false},
		})
	})
	t.Run("cluster-wide", func(t *testing.T) {
		// Another release namespace than the examples', so that the Roles
		// of the namespaced case cannot answer for it.
		out, errOut, err := helm(t, "template", release, chart, "-n", "ops", "-f", filepath.Join(chart, "ci", "clusterwide-values.yaml"))
		if err != nil {
			t.Fatalf("helm template: %v\n%s", err, errOut)
		}
		apply(t, out)
		check(t, []access{
			{"ops", "get", "secrets", "", "anywhere", "db-creds", true},
			{"ops", "get", "secrets", "", "anywhere", "other", false},
			{"ops", "list", "secrets", "", "anywhere", "", false},
			{"ops", "patch", "deployments", "apps", "anywhere", "web", true},
			{"ops", "update", "deployments", "apps", "anywhere", "web", false},
			{"ops", "create", "leases", "coordination.k8s.io", "anywhere", "", true},
			{"ops:k8secrets-watch", "watch", "secrets", "", "anywhere", "", true},
			{"ops:k8secrets-watch", "patch", "pods", "", "anywhere", "web-1", true},
			{"ops:k8secrets-watch", "update", "leases", "coordination.k8s.io", "ops", "k8secrets-watch", true},
			{"ops:k8secrets-watch", "update", "leases", "coordination.k8s.io", "anywhere", "k8secrets-watch", false},
			{"ops:k8secrets-watch", "get", "secrets", "", "anywhere", "db-creds", false},
		})
	})
}
