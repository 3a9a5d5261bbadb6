package plan

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/k8secrets/k8secrets/job/internal/workload"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

type podOpt func(*corev1.PodTemplateSpec)

func template(opts ...podOpt) corev1.PodTemplateSpec {
	t := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "web:1"}}},
	}
	for _, o := range opts {
		o(&t)
	}
	return t
}

func deployment(name string, opts ...podOpt) workload.Workload {
	return workload.New(&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
		Spec: appsv1.DeploymentSpec{Template: template(opts...)}})
}

func statefulSet(name string, opts ...podOpt) workload.Workload {
	return workload.New(&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
		Spec: appsv1.StatefulSetSpec{Template: template(opts...)}})
}

func daemonSet(name string, opts ...podOpt) workload.Workload {
	return workload.New(&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
		Spec: appsv1.DaemonSetSpec{Template: template(opts...)}})
}

func withContainer(name string) podOpt {
	return func(t *corev1.PodTemplateSpec) {
		t.Spec.Containers = append(t.Spec.Containers, corev1.Container{Name: name, Image: name + ":1"})
	}
}

func withUser(container string, uid int64) podOpt {
	return func(t *corev1.PodTemplateSpec) {
		for i := range t.Spec.Containers {
			if t.Spec.Containers[i].Name == container {
				t.Spec.Containers[i].SecurityContext = &corev1.SecurityContext{RunAsUser: ptr.To(uid)}
			}
		}
	}
}

func withPodUser(uid int64) podOpt {
	return func(t *corev1.PodTemplateSpec) {
		t.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To(uid), RunAsGroup: ptr.To(uid + 1)}
	}
}

func withVolume(v corev1.Volume) podOpt {
	return func(t *corev1.PodTemplateSpec) { t.Spec.Volumes = append(t.Spec.Volumes, v) }
}

func withMount(container string, m corev1.VolumeMount) podOpt {
	return func(t *corev1.PodTemplateSpec) {
		for i := range t.Spec.Containers {
			if t.Spec.Containers[i].Name == container {
				t.Spec.Containers[i].VolumeMounts = append(t.Spec.Containers[i].VolumeMounts, m)
			}
		}
	}
}

func withPort(container string, port int32) podOpt {
	return func(t *corev1.PodTemplateSpec) {
		for i := range t.Spec.Containers {
			if t.Spec.Containers[i].Name == container {
				t.Spec.Containers[i].Ports = append(t.Spec.Containers[i].Ports, corev1.ContainerPort{ContainerPort: port})
			}
		}
	}
}

func secretVolume(name, secret string) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: secret}}}
}

func opts(mod ...func(*Options)) Options {
	o := Options{Secret: "db-creds", MountPath: "/var/run/secrets/k8secrets/db-creds", Agent: true,
		AgentImage: "k8secrets-agent:test", Reload: "restart", NativeSidecar: true}
	for _, m := range mod {
		m(&o)
	}
	return o
}

// goldenKey stands in for a fresh content key in the golden files.
const goldenKey = "R09MREVOLUtFWS1HT0xERU4tS0VZLUdPTERFTi1LRVk"

// fixKey makes every new injection of the test get goldenKey.
func fixKey(t *testing.T) {
	f := newKey
	t.Cleanup(func() { newKey = f })
	newKey = func() (string, error) { return goldenKey, nil }
}

func TestInjectGolden(t *testing.T) {
	fixKey(t)
	for _, tc := range []struct {
		name string
		w    workload.Workload
		o    Options
	}{
		{"deployment-restart-native", deployment("web", withUser("app", 1000)), opts()},
		{"deployment-signal-pod-user", deployment("web", withPodUser(2000)), opts(func(o *Options) { o.Reload = "signal:SIGHUP" })},
		{"deployment-http-legacy-sidecar", deployment("web"), opts(func(o *Options) {
			o.Reload = "http:http://localhost:8080/-/reload"
			o.NativeSidecar = false
		})},
		{"deployment-no-agent-one-container", deployment("web", withContainer("proxy")), opts(func(o *Options) {
			o.Agent = false
			o.Containers = []string{"app"}
		})},
		{"statefulset-custom-path", statefulSet("db", withUser("app", 999), withPort("app", 9533)), opts(func(o *Options) { o.MountPath = "/etc/db" })},
		{"daemonset", daemonSet("node-agent", withUser("app", 1000)), opts()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := Inject(tc.w, tc.o)
			if err != nil {
				t.Fatalf("Inject(%s) = %v", tc.w, err)
			}
			got, err := yaml.Marshal(map[string]any{"apply": ch.Apply, "hash": ch.Hash, "notes": ch.Notes, "fieldManager": FieldManager(ch.ID)})
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, got)
		})
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	file := filepath.Join("testdata", name+".yaml")
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("Inject(%s) differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", name, file, got, want)
	}
}

func TestInjectIsStableAndSkipsSameHash(t *testing.T) {
	w := deployment("web", withUser("app", 1000))
	a, err := Inject(w, opts())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Inject(w, opts())
	if a.Hash != b.Hash || a.Skip != "" {
		t.Fatalf("Inject twice: hashes %s, %s, skip %q; want equal hashes and no skip", a.Hash, b.Hash, a.Skip)
	}
	injected := deployment("web", withUser("app", 1000), func(t *corev1.PodTemplateSpec) {
		t.Annotations = map[string]string{HashAnnotation("db-creds"): a.Hash}
	})
	c, _ := Inject(injected, opts())
	if c.Skip == "" {
		t.Errorf("Inject(already injected with hash %s).Skip is empty; want a reason", a.Hash)
	}
	d, _ := Inject(injected, opts(func(o *Options) { o.AgentImage = "k8secrets-agent:v2" }))
	if d.Skip != "" || d.Hash == a.Hash {
		t.Errorf("Inject(new agent image) = skip %q, hash %s; want a new change", d.Skip, d.Hash)
	}
}

func TestConflicts(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    workload.Workload
		o    Options
		want string
	}{
		{"volume name taken", deployment("web", withVolume(corev1.Volume{Name: "k8secrets-db-creds", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})), opts(), `volume "k8secrets-db-creds" already exists`},
		{"volume name taken by another secret", deployment("web", withVolume(secretVolume("k8secrets-db-creds", "other"))), opts(), "already exists"},
		{"mount path used", deployment("web", withVolume(secretVolume("certs", "tls")), withMount("app", corev1.VolumeMount{Name: "certs", MountPath: "/var/run/secrets/k8secrets/db-creds"})), opts(), "already mounts volume \"certs\""},
		{"mount path used, trailing slash", deployment("web", withVolume(secretVolume("certs", "tls")), withMount("app", corev1.VolumeMount{Name: "certs", MountPath: "/var/run/secrets/k8secrets/db-creds/"})), opts(), "the same path as /var/run/secrets/k8secrets/db-creds"},
		{"mount above the path", deployment("web", withVolume(secretVolume("certs", "tls")), withMount("app", corev1.VolumeMount{Name: "certs", MountPath: "/var/run/secrets"})), opts(), "at /var/run/secrets, which contains /var/run/secrets/k8secrets/db-creds"},
		{"mount below the path", deployment("web", withVolume(secretVolume("certs", "tls")), withMount("app", corev1.VolumeMount{Name: "certs", MountPath: "/var/run/secrets/k8secrets/db-creds/tls"})), opts(), "which sits inside"},
		{"mount above a trailing-slash path", deployment("web", withVolume(secretVolume("certs", "tls")), withMount("app", corev1.VolumeMount{Name: "certs", MountPath: "/etc/"})), opts(func(o *Options) { o.MountPath = "/etc/db" }), "which contains /etc/db"},
		{"subPath mount of the secret", deployment("web", withVolume(secretVolume("creds", "db-creds")), withMount("app", corev1.VolumeMount{Name: "creds", MountPath: "/etc/pw", SubPath: "password"})), opts(), "subPath"},
		{"projected subPath mount", deployment("web", withVolume(corev1.Volume{Name: "all", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "db-creds"}}}}}}}), withMount("app", corev1.VolumeMount{Name: "all", MountPath: "/etc/pw", SubPath: "password"})), opts(), "subPath"},
		{"unknown container", deployment("web"), opts(func(o *Options) { o.Containers = []string{"nginx"} }), `has no container nginx; its containers are app`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Inject(tc.w, tc.o)
			if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Deployment shop/web") {
				t.Fatalf("Inject(%s) = %v; want ErrConflict naming Deployment shop/web and %q", tc.name, err, tc.want)
			}
		})
	}
	// A sibling path that merely shares a prefix is no conflict.
	w0 := deployment("web", withVolume(secretVolume("certs", "tls")), withMount("app", corev1.VolumeMount{Name: "certs", MountPath: "/var/run/secrets/k8secrets/db-credsx"}))
	if _, err := Inject(w0, opts()); err != nil {
		t.Errorf("Inject(mount at a sibling path) = %v; want no conflict", err)
	}
	// The same Secret already mounted whole, elsewhere, is no conflict.
	w := deployment("web", withVolume(secretVolume("creds", "db-creds")), withMount("app", corev1.VolumeMount{Name: "creds", MountPath: "/etc/creds"}))
	if _, err := Inject(w, opts()); err != nil {
		t.Errorf("Inject(secret already mounted whole elsewhere) = %v; want no conflict", err)
	}
}

func TestAgentUserNotes(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    workload.Workload
		want string
	}{
		{"unknown user", deployment("web"), "sets no runAsUser"},
		{"root", deployment("web", withUser("app", 0)), "runs as root"},
		{"different users", deployment("web", withContainer("side"), withUser("app", 1), withUser("side", 2)), "different users"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := Inject(tc.w, opts())
			if err != nil {
				t.Fatal(err)
			}
			if len(ch.Notes) == 0 || !strings.Contains(strings.Join(ch.Notes, "\n"), tc.want) {
				t.Errorf("Inject(%s).Notes = %q; want a note about %q", tc.name, ch.Notes, tc.want)
			}
		})
	}
	ch, _ := Inject(deployment("web"), opts(func(o *Options) { o.Reload = "http:http://localhost:1/r" }))
	if len(ch.Notes) != 0 {
		t.Errorf("Inject(http mode).Notes = %q; want none: the agent need not share the app's user", ch.Notes)
	}
}

func TestID(t *testing.T) {
	long := strings.Repeat("a", 253)
	for _, tc := range []struct{ secret, want string }{
		{"db-creds", "db-creds"},
		{"tls.example.com", ""},
		{long, ""},
		{strings.Repeat("b", 40), strings.Repeat("b", 40)},
		{strings.Repeat("b", 41), ""},
	} {
		id := ID(tc.secret)
		if tc.want != "" && id != tc.want {
			t.Errorf("ID(%q) = %q; want %q", tc.secret, id, tc.want)
		}
		for _, n := range []string{id, VolumeName(id), AgentName(id)} {
			if errs := validation.IsDNS1123Label(n); len(errs) > 0 {
				t.Errorf("name %q derived from %q: %v", n, tc.secret, errs)
			}
		}
		if errs := validation.IsQualifiedName(HashAnnotation(id)); len(errs) > 0 {
			t.Errorf("annotation %q: %v", HashAnnotation(id), errs)
		}
		if ID(tc.secret) != id {
			t.Errorf("ID(%q) is not stable", tc.secret)
		}
	}
	if ID("a.b") == ID("a-b") {
		t.Errorf("ID(a.b) == ID(a-b) == %q; two Secrets must not share an ID", ID("a.b"))
	}
}

func TestRemove(t *testing.T) {
	w := deployment("web")
	if ch := Remove(w, "db-creds"); ch.Skip == "" {
		t.Errorf("Remove(not injected).Skip is empty")
	}
	injected := deployment("web", func(t *corev1.PodTemplateSpec) {
		t.Annotations = map[string]string{SecretAnnotation("db-creds"): "db-creds"}
	})
	ch := Remove(injected, "db-creds")
	got, _ := yaml.Marshal(ch.Apply)
	if ch.Skip != "" || strings.Contains(string(got), "spec") {
		t.Errorf("Remove(injected) = skip %q, apply %s; want the bare object", ch.Skip, got)
	}
}
