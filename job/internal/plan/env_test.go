package plan

import (
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/k8secrets/k8secrets/job/internal/workload"
)

func withEnvKey(container, secret string) podOpt {
	return func(t *corev1.PodTemplateSpec) {
		for i := range t.Spec.Containers {
			if t.Spec.Containers[i].Name == container {
				t.Spec.Containers[i].Env = append(t.Spec.Containers[i].Env, corev1.EnvVar{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{
					SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: "password"}}})
			}
		}
	}
}

func withEnvFrom(container, secret string) podOpt {
	return func(t *corev1.PodTemplateSpec) {
		for i := range t.Spec.Containers {
			if t.Spec.Containers[i].Name == container {
				t.Spec.Containers[i].EnvFrom = append(t.Spec.Containers[i].EnvFrom, corev1.EnvFromSource{
					SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: secret}}})
			}
		}
	}
}

func TestEnvContainers(t *testing.T) {
	tests := []struct {
		name string
		opts []podOpt
		want []string
	}{
		{"secretKeyRef", []podOpt{withEnvKey("app", "db-creds")}, []string{"app"}},
		{"envFrom", []podOpt{withContainer("worker"), withEnvFrom("worker", "db-creds")}, []string{"worker"}},
		{"both containers", []podOpt{withContainer("worker"), withEnvFrom("worker", "db-creds"), withEnvKey("app", "db-creds")}, []string{"app", "worker"}},
		{"another Secret", []podOpt{withEnvKey("app", "other"), withEnvFrom("app", "other")}, nil},
		{"a ConfigMap of the same name", []podOpt{func(t *corev1.PodTemplateSpec) {
			t.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "db-creds"}}}}
			t.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "db-creds"}, Key: "x"}}}}
		}}, nil},
		{"a plain value", []podOpt{func(t *corev1.PodTemplateSpec) {
			t.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "db-creds", Value: "db-creds"}}
		}}, nil},
		{"an agent container", []podOpt{withContainer("k8secrets-agent-db-creds"), withEnvFrom("k8secrets-agent-db-creds", "db-creds")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := template(tt.opts...)
			if got := EnvContainers(&tmpl, "db-creds"); !slices.Equal(got, tt.want) {
				t.Errorf("EnvContainers(%s) = %q; want %q", tt.name, got, tt.want)
			}
		})
	}
}

func TestInjectEnvGolden(t *testing.T) {
	fixKey(t)
	for _, tc := range []struct {
		name string
		w    workload.Workload
		o    Options
	}{
		// The app (user 1000) takes the Secret through secretKeyRef; a
		// bystander of another user does not use it.
		{"deployment-env-restart", deployment("web", withUser("app", 1000), withEnvKey("app", "db-creds"), withContainer("bystander"), withUser("bystander", 2000)), opts()},
		{"deployment-envfrom-restart-all", deployment("web", withUser("app", 1000), withEnvFrom("app", "db-creds"), withContainer("bystander"), withUser("bystander", 2000)), opts(func(o *Options) {
			o.Reload = "restart-all"
			o.RestartAllContainers = true
		})},
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

// TestInjectEnvTargets checks the shape of an env injection in restart
// mode directly: the Secret in the agent only, the marker in the agent and
// the env container only, the agent as the env container's user and told
// to target the marker.
func TestInjectEnvTargets(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  podOpt
	}{{"secretKeyRef", withEnvKey("app", "db-creds")}, {"envFrom", withEnvFrom("app", "db-creds")}} {
		t.Run(tc.name, func(t *testing.T) {
			w := deployment("web", withUser("app", 1000), tc.opt, withContainer("bystander"), withUser("bystander", 2000))
			ch, err := Inject(w, opts())
			if err != nil {
				t.Fatal(err)
			}
			spec := applied(t, ch)
			mounts := map[string][]string{}
			for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
				for _, m := range c.VolumeMounts {
					mounts[m.Name] = append(mounts[m.Name], c.Name)
				}
			}
			agent := AgentName("db-creds")
			if got := mounts[VolumeName("db-creds")]; !slices.Equal(got, []string{agent}) {
				t.Errorf("Secret volume mounted in %q; want the agent only", got)
			}
			if got := mounts[TargetVolumeName("db-creds")]; !slices.Equal(got, []string{agent, "app"}) {
				t.Errorf("target marker mounted in %q; want the agent and app only", got)
			}
			a := spec.InitContainers[0]
			if !slices.Contains(a.Args, "--target-mount=/var/run/k8secrets-target/db-creds") {
				t.Errorf("agent args %q; want --target-mount=/var/run/k8secrets-target/db-creds", a.Args)
			}
			if u := a.SecurityContext.RunAsUser; u == nil || *u != 1000 {
				t.Errorf("agent runAsUser %v; want the env app's 1000", u)
			}
			if spec.ShareProcessNamespace == nil || !*spec.ShareProcessNamespace {
				t.Error("shareProcessNamespace not set; the agent cannot restart the app")
			}
			for _, v := range spec.Volumes {
				if v.Name == TargetVolumeName("db-creds") && (v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory) {
					t.Errorf("marker volume %+v; want a memory-backed emptyDir (a tmpfs of its own)", v.VolumeSource)
				}
			}
		})
	}
}

// applied decodes the pod spec of a change's apply configuration.
func applied(t *testing.T, ch Change) corev1.PodSpec {
	t.Helper()
	b, err := yaml.Marshal(ch.Apply)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Spec struct {
			Template corev1.PodTemplateSpec `json:"template"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Spec
}

func TestInjectEnvRefusedOrAsBefore(t *testing.T) {
	w := deployment("web", withUser("app", 1000), withEnvKey("app", "db-creds"), withContainer("bystander"))
	for _, reload := range []string{"signal:SIGHUP", "http:http://localhost:8080/-/reload"} {
		_, err := Inject(w, opts(func(o *Options) { o.Reload = reload }))
		if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `container app takes secret db-creds through env`) || !strings.Contains(err.Error(), "--reload restart") {
			t.Errorf("Inject(--reload %s) of an env app = %v; want a conflict naming the container and advising --reload restart", reload, err)
		}
	}
	busy := deployment("web", withEnvKey("app", "db-creds"), withVolume(corev1.Volume{Name: "run"}),
		withMount("app", corev1.VolumeMount{Name: "run", MountPath: "/var/run/k8secrets-target"}))
	if _, err := Inject(busy, opts()); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `"run"`) {
		t.Errorf("Inject() where the app mounts the marker's parent = %v; want a conflict naming the volume", err)
	}

	// --container: the named containers mount the files, as before.
	ch, err := Inject(w, opts(func(o *Options) { o.Containers = []string{"app"} }))
	if err != nil {
		t.Fatal(err)
	}
	spec := applied(t, ch)
	for _, v := range spec.Volumes {
		if v.Name == TargetVolumeName("db-creds") {
			t.Errorf("--container app: a marker volume; want the files mounted into app, no marker")
		}
	}
	if spec.Containers[0].Name != "app" || len(spec.Containers[0].VolumeMounts) != 1 || spec.Containers[0].VolumeMounts[0].Name != VolumeName("db-creds") {
		t.Errorf("--container app: app mounts %+v; want the Secret volume", spec.Containers)
	}
	// Without the agent nobody restarts the app: mounted as before.
	ch, err = Inject(w, opts(func(o *Options) { o.Agent = false }))
	if err != nil {
		t.Fatal(err)
	}
	if spec := applied(t, ch); len(spec.Containers) != 2 {
		t.Errorf("--no-agent: %d containers mount the Secret; want both app containers, as before", len(spec.Containers))
	}
}
