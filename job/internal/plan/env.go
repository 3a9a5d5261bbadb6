package plan

import (
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// Apps that take the Secret through environment variables
// (env[].valueFrom.secretKeyRef, envFrom[].secretRef) read it once, when
// their process starts, and the kubelet resolves those values each time it
// starts a container: restarting the container in place (same pod) gives
// its new process the Secret's current value. So for such a container the
// agent restarts it; the Secret needs no mount in it, only in the agent,
// which watches the files to see the change. The agent tells the container
// apart by a marker: an empty memory-backed emptyDir, a tmpfs of its own
// (as a Secret volume is), mounted read-only into the agent and into
// exactly those containers; the agent restarts the containers whose mount
// namespace holds it (--target-mount), never the others.

// TargetVolumeName is the marker volume's name for injection id.
func TargetVolumeName(id string) string {
	return wellknown.VolumePrefix + id + wellknown.TargetVolumeSuffix
}

// TargetMountPath is where the marker is mounted, in the agent and in the
// containers it restarts.
func TargetMountPath(id string) string { return path.Join(wellknown.TargetMountDir, id) }

// EnvContainers returns the app containers of tmpl (agents aside) that take
// secret through env: an env[].valueFrom.secretKeyRef or an
// envFrom[].secretRef naming it.
func EnvContainers(tmpl *corev1.PodTemplateSpec, secret string) []string {
	var out []string
	for _, c := range tmpl.Spec.Containers {
		if !isAgent(c.Name) && takesEnv(c, secret) {
			out = append(out, c.Name)
		}
	}
	return out
}

func takesEnv(c corev1.Container, secret string) bool {
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == secret {
			return true
		}
	}
	for _, e := range c.EnvFrom {
		if e.SecretRef != nil && e.SecretRef.Name == secret {
			return true
		}
	}
	return false
}

// envTargets returns the containers to restart because they take o.Secret
// through env, when the Job chooses the containers (no --container: with
// it, the named containers mount the files, as before) and adds the agent.
func envTargets(tmpl *corev1.PodTemplateSpec, o Options) []string {
	if !o.Agent || len(o.Containers) > 0 {
		return nil
	}
	return EnvContainers(tmpl, o.Secret)
}

// checkEnv refuses, before any write, a reload that cannot bring an env
// app the new value, and a marker path one of those containers already
// uses.
func checkEnv(w workload.Workload, tmpl *corev1.PodTemplateSpec, o Options, env []string) error {
	names := strings.Join(env, ", ")
	switch reloadMode(o.Reload) {
	case "restart":
	case "restart-all":
		return nil
	default:
		return fmt.Errorf("%w: %s: container %s takes secret %s through env, which the kubelet sets only when it starts the container: --reload %s cannot bring it the new value; use --reload restart (the default: the agent restarts exactly those containers in place) or restart-all, or name with --container the containers that read the Secret as files",
			ErrConflict, w, names, o.Secret, o.Reload)
	}
	target := TargetMountPath(ID(o.Secret))
	chosen := map[string]bool{}
	for _, n := range env {
		chosen[n] = true
	}
	var errs []string
	for _, c := range tmpl.Spec.Containers {
		if !chosen[c.Name] {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == TargetVolumeName(ID(o.Secret)) {
				continue
			}
			if how := overlap(m.MountPath, target); how != "" {
				errs = append(errs, fmt.Sprintf("container %q already mounts volume %q at %s, %s the agent's target marker %s", c.Name, m.Name, m.MountPath, how, target))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s: %s; move that mount, or name the containers to mount the Secret into with --container", ErrConflict, w, strings.Join(errs, "; "))
	}
	return nil
}

// withEnvTargets marks the env containers for the agent (in restart mode)
// and returns the notes the report shows.
func withEnvTargets(spec *corev1ac.PodSpecApplyConfiguration, agent *corev1ac.ContainerApplyConfiguration, id, secret, reload string, env []string) []string {
	names := strings.Join(env, ", ")
	if reloadMode(reload) == "restart-all" {
		return []string{fmt.Sprintf("container %s takes secret %s through env: the Secret is mounted into the agent only; --reload restart-all restarts every container of the pod on each change, not only those (--reload restart restarts exactly them)", names, secret)}
	}
	mark := func() *corev1ac.VolumeMountApplyConfiguration {
		return corev1ac.VolumeMount().WithName(TargetVolumeName(id)).WithMountPath(TargetMountPath(id)).WithReadOnly(true)
	}
	spec.WithVolumes(corev1ac.Volume().WithName(TargetVolumeName(id)).
		WithEmptyDir(corev1ac.EmptyDirVolumeSource().
			WithMedium(corev1.StorageMediumMemory).
			// Nobody writes it: every mount is read-only.
			WithSizeLimit(resource.MustParse("1Mi"))))
	for _, n := range env {
		spec.WithContainers(corev1ac.Container().WithName(n).WithVolumeMounts(mark()))
	}
	agent.WithArgs("--target-mount=" + TargetMountPath(id)).WithVolumeMounts(mark())
	return []string{fmt.Sprintf("container %s takes secret %s through env: the Secret is mounted into the agent only, and the agent restarts exactly that container in place on each change (its new process gets the current value); other containers are left alone", names, secret)}
}
