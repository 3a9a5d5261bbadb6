package main

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// envDeployment is a Deployment whose app takes db-creds through env
// (secretKeyRef), beside a bystander container of another user that does
// not use it.
func (cl *cluster) envDeployment(name string) *appsv1.Deployment {
	cl.t.Helper()
	tmpl := podTemplate(name)
	tmpl.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: ptr.To(int64(1000))}
	tmpl.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "db-creds"}, Key: "password"}}}}
	tmpl.Spec.Containers = append(tmpl.Spec.Containers, corev1.Container{Name: "bystander", Image: "web:1",
		SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To(int64(2000))}})
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(1)), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}}, Template: tmpl}}
	if _, err := cl.c.AppsV1().Deployments(cl.ns).Create(cl.ctx, d, metav1.CreateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	return cl.waitDeployment(name)
}

// mountedIn maps each volume of the template to the containers that mount it.
func mountedIn(spec corev1.PodSpec) map[string][]string {
	out := map[string][]string{}
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		for _, m := range c.VolumeMounts {
			out[m.Name] = append(out[m.Name], c.Name)
		}
	}
	return out
}

// An app that takes the Secret through env, on a real API server: the
// applied template mounts the Secret into the agent only and the target
// marker (a memory emptyDir) into the agent and the env container only,
// owned by the injection's field manager; remove takes all of it away and
// leaves the app's env alone.
func TestAPIEnvAppInjectRemove(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	orig := cl.envDeployment("web")
	if r := cl.job(injectArgs("app=web", "db-creds")...); r.code != 0 {
		t.Fatalf("inject: exit %d (%v)\n%s", r.code, r.err, r.logs)
	}
	d := cl.waitDeployment("web")
	spec := d.Spec.Template.Spec
	m := mountedIn(spec)
	if got := m["k8secrets-db-creds"]; !slices.Equal(got, []string{"k8secrets-agent-db-creds"}) {
		t.Errorf("the Secret volume is mounted in %q; want the agent only", got)
	}
	if got := m["k8secrets-db-creds-target"]; !slices.Equal(got, []string{"k8secrets-agent-db-creds", "app"}) {
		t.Errorf("the target marker is mounted in %q; want the agent and app only", got)
	}
	var marker *corev1.Volume
	for i, v := range spec.Volumes {
		if v.Name == "k8secrets-db-creds-target" {
			marker = &spec.Volumes[i]
		}
	}
	if marker == nil || marker.EmptyDir == nil || marker.EmptyDir.Medium != corev1.StorageMediumMemory {
		t.Errorf("marker volume %+v; want a memory-backed emptyDir", marker)
	}
	a := spec.InitContainers[0]
	if !slices.Contains(a.Args, "--target-mount=/var/run/k8secrets-target/db-creds") || a.SecurityContext.RunAsUser == nil || *a.SecurityContext.RunAsUser != 1000 {
		t.Errorf("agent args %q as user %d; want --target-mount on the marker, as the env app's user 1000", a.Args, ptr.Deref(a.SecurityContext.RunAsUser, -1))
	}
	owned := false
	for _, e := range d.ManagedFields {
		owned = owned || (e.Manager == "k8secrets/db-creds" && strings.Contains(string(e.FieldsV1.Raw), `"k:{\"name\":\"k8secrets-db-creds-target\"}"`))
	}
	if !owned {
		t.Error("the marker volume is not owned by the field manager k8secrets/db-creds")
	}

	if r := cl.job("remove", "-l", "app=web", "--secret", "db-creds", "--timeout", "30s"); r.code != 0 {
		t.Fatalf("remove: exit %d (%v)\n%s", r.code, r.err, r.logs)
	}
	d = cl.waitDeployment("web")
	spec = d.Spec.Template.Spec
	if len(spec.Volumes) != 0 || len(spec.InitContainers) != 0 || len(mountedIn(spec)) != 0 {
		t.Errorf("after remove: volumes %v, init containers %d, mounts %v; want none", spec.Volumes, len(spec.InitContainers), mountedIn(spec))
	}
	if len(spec.Containers[0].Env) != 1 || spec.Containers[0].Env[0].ValueFrom.SecretKeyRef.Name != orig.Spec.Template.Spec.Containers[0].Env[0].ValueFrom.SecretKeyRef.Name {
		t.Errorf("after remove: the app's env %+v; want it as the owner wrote it", spec.Containers[0].Env)
	}
}

// A signal or an HTTP call cannot change a running process's environment:
// inject refuses them for an env app at planning, exit 4, nothing moved.
func TestAPIEnvAppSignalRefused(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.envDeployment("web")
	before := cl.versions()
	r := cl.job(injectArgs("app=web", "db-creds", "--reload", "signal:SIGHUP")...)
	if r.code != 4 || !strings.Contains(errString(r.err), "container app takes secret db-creds through env") {
		t.Fatalf("inject --reload signal:SIGHUP of an env app: exit %d (%v); want 4 naming the container", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed although the plan was refused:\nbefore %s\nafter  %s", before, after)
	}
}
