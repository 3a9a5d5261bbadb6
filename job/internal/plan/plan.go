// Package plan turns "mount this Secret into this workload" into one
// server-side apply configuration per workload, and refuses, before any
// write, every change that would conflict with what the workload has.
package plan

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/k8secrets/k8secrets/internal/contentid"
	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// ErrConflict wraps every conflict found while planning: nothing is changed.
var ErrConflict = errors.New("conflict")

// Options describe one injection.
type Options struct {
	Secret     string
	MountPath  string
	Containers []string // empty: every app container, or (env.go) none where some take the Secret through env
	Agent      bool
	AgentImage string
	Reload     string // the agent's reload spec: restart, signal:NAME, http:URL, exec:CMD
	// NativeSidecar runs the agent as an init container with restartPolicy
	// Always (Kubernetes 1.29 and later), so it starts before the app and
	// does not keep Jobs' pods alive; otherwise it is a regular container.
	NativeSidecar bool
	// RestartAllContainers: the server offers container restart rules with
	// the RestartAllContainers action (Kubernetes 1.36 and later), which
	// --reload restart-all needs.
	RestartAllContainers bool
}

// Change is what the Job will do to one workload.
type Change struct {
	Workload workload.Workload
	// ID names this injection in volume, container, annotation and manager names.
	ID string
	// Hash digests the injection's intent; it is empty for a removal.
	Hash string
	// Skip, when set, says why the workload needs no change.
	Skip string
	// Apply is the apply configuration (*appsv1ac.DeploymentApplyConfiguration,
	// StatefulSet or DaemonSet) to apply under FieldManager(ID). For a
	// removal it names the object only: applying it drops every field the
	// manager owns.
	Apply any
	// Notes are warnings the report shows with the change.
	Notes []string
	// Check, if set, judges the pod template the server-side dry-run
	// returned: a field the server dropped silently is a rejection.
	Check func(*corev1.PodTemplateSpec) error
}

// FieldManager is the server-side apply manager of the injection id.
func FieldManager(id string) string { return wellknown.FieldManager + "/" + id }

// maxID keeps every derived name within the 63 characters of a DNS label
// and an annotation name: "k8secrets-agent-" + ID is at most 56.
const maxID = 40

// ID derives a stable DNS label from a Secret name (a DNS subdomain, which
// may hold dots and run to 253 characters): dots become dashes, and a name
// that had to change or is too long gets a digest suffix so two Secrets
// never share an ID.
func ID(secret string) string {
	id := strings.ReplaceAll(secret, ".", "-")
	if id == secret && len(id) <= maxID {
		return id
	}
	sum := sha256.Sum256([]byte(secret))
	suffix := hex.EncodeToString(sum[:])[:8]
	if len(id) > maxID-9 {
		id = strings.TrimRight(id[:maxID-9], "-")
	}
	return id + "-" + suffix
}

// VolumeName is the Secret volume's name for injection id.
func VolumeName(id string) string { return wellknown.VolumePrefix + id }

// AgentName is the agent container's name for injection id.
func AgentName(id string) string { return wellknown.AgentContainerPrefix + "-" + id }

// SecretAnnotation and HashAnnotation are the pod template's marks.
func SecretAnnotation(id string) string { return wellknown.AnnotationSecretPrefix + id }

// HashAnnotation holds the injection hash of id on the pod template.
func HashAnnotation(id string) string { return wellknown.AnnotationHashPrefix + id }

// Inject plans mounting o.Secret into w, with the agent if o.Agent.
func Inject(w workload.Workload, o Options) (Change, error) {
	id := ID(o.Secret)
	ch := Change{Workload: w, ID: id}
	tmpl := w.Template()
	vol := VolumeName(id)

	containers, err := chooseContainers(w, tmpl, o.Containers)
	if err != nil {
		return Change{}, err
	}
	if o.Agent && reloadMode(o.Reload) == "restart-all" && !(o.NativeSidecar && o.RestartAllContainers) {
		return Change{}, fmt.Errorf("%w: %s: --reload restart-all needs container restart rules with the RestartAllContainers action (Kubernetes 1.36 or later), which this API server does not offer; use --reload restart", ErrConflict, w)
	}
	env := envTargets(tmpl, o) // see env.go
	if len(env) > 0 {
		if err := checkEnv(w, tmpl, o, env); err != nil {
			return Change{}, err
		}
		containers = nil // the Secret is mounted into the agent only
	}
	if err := checkConflicts(w, tmpl, vol, o, containers); err != nil {
		return Change{}, err
	}

	spec := corev1ac.PodSpec().WithVolumes(corev1ac.Volume().WithName(vol).
		WithSecret(corev1ac.SecretVolumeSource().WithSecretName(o.Secret)))
	mount := func() *corev1ac.VolumeMountApplyConfiguration {
		return corev1ac.VolumeMount().WithName(vol).WithMountPath(o.MountPath).WithReadOnly(true)
	}
	for _, c := range containers {
		spec.WithContainers(corev1ac.Container().WithName(c).WithVolumeMounts(mount()))
	}
	var key string
	if o.Agent {
		if key, err = contentKey(tmpl, id); err != nil {
			return Change{}, fmt.Errorf("%s: content key: %w", w, err)
		}
		targets := containers
		if len(env) > 0 {
			targets = env
		}
		agent, notes := agentContainer(tmpl, id, o, targets, mount())
		agent.WithEnv(corev1ac.EnvVar().WithName(contentid.KeyEnv).WithValue(key))
		ch.Notes = append(ch.Notes, notes...)
		if len(env) > 0 {
			ch.Notes = append(ch.Notes, withEnvTargets(spec, agent, id, o.Secret, o.Reload, env)...)
		}
		if reloadMode(o.Reload) == "restart-all" {
			withRestartAll(spec, agent, id)
			ch.Check = keepsRestartRule(id)
		}
		if mode := reloadMode(o.Reload); mode == "restart" || mode == "restart-all" {
			withTurns(spec, agent, id, mode)
		}
		if o.NativeSidecar {
			spec.WithInitContainers(agent.WithRestartPolicy(corev1.ContainerRestartPolicyAlways))
		} else {
			spec.WithContainers(agent)
		}
		if mode := reloadMode(o.Reload); mode == "signal" || mode == "restart" {
			// The agent must see the app's processes to signal them.
			spec.WithShareProcessNamespace(true)
		}
	}
	t := corev1ac.PodTemplateSpec().
		WithAnnotations(map[string]string{SecretAnnotation(id): o.Secret}).
		WithSpec(spec)
	ch.Hash = hash(t, key)
	t.WithAnnotations(map[string]string{HashAnnotation(id): ch.Hash})
	if tmpl.Annotations[HashAnnotation(id)] == ch.Hash {
		ch.Skip = "already injected (same injection hash " + ch.Hash + ")"
	}
	ch.Apply = wrap(w, t)
	return ch, nil
}

// Remove plans undoing the injection of secret from w: an apply of the bare
// object under the injection's manager, which drops exactly the fields that
// manager owns (volume, mounts, agent, marks) and nothing else.
func Remove(w workload.Workload, secret string) Change {
	id := ID(secret)
	ch := Change{Workload: w, ID: id, Apply: wrap(w, nil)}
	if _, ok := w.Template().Annotations[SecretAnnotation(id)]; !ok {
		ch.Skip = "not injected with secret " + secret
	}
	return ch
}

// wrap puts a pod template into the apply configuration of w's kind, with
// the workload's injected label; a nil template gives the bare object.
func wrap(w workload.Workload, t *corev1ac.PodTemplateSpecApplyConfiguration) any {
	name, ns := w.Name(), w.Namespace()
	var l map[string]string
	if t != nil {
		l = map[string]string{wellknown.LabelInjected: "true"}
	}
	switch w.Kind() {
	case workload.Deployment:
		a := appsv1ac.Deployment(name, ns)
		if t != nil {
			a.WithLabels(l).WithSpec(appsv1ac.DeploymentSpec().WithTemplate(t))
		}
		return a
	case workload.StatefulSet:
		a := appsv1ac.StatefulSet(name, ns)
		if t != nil {
			a.WithLabels(l).WithSpec(appsv1ac.StatefulSetSpec().WithTemplate(t))
		}
		return a
	case workload.DaemonSet:
		a := appsv1ac.DaemonSet(name, ns)
		if t != nil {
			a.WithLabels(l).WithSpec(appsv1ac.DaemonSetSpec().WithTemplate(t))
		}
		return a
	}
	panic("plan: unsupported kind " + string(w.Kind()))
}

// hash digests the intent t, with the content key in it replaced by a
// placeholder: the key is state the workload keeps (read back on a rerun),
// not intent, so the same intent has the same hash in every workload and a
// new key never makes a change of its own.
func hash(t *corev1ac.PodTemplateSpecApplyConfiguration, key string) string {
	b, err := json.Marshal(t) // maps marshal in key order: stable
	if err != nil {
		panic(fmt.Sprintf("plan: marshal pod template: %v", err))
	}
	if key != "" {
		b = bytes.ReplaceAll(b, []byte(key), []byte("CONTENT-KEY"))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:16]
}

// overlap says how an existing mount at have relates to a new one at want,
// trailing slashes and dots aside: the same path, a mount that would hide
// the new one, or one the new mount would hide. Empty: apart.
func overlap(have, want string) string {
	have, want = path.Clean(have), path.Clean(want)
	switch {
	case have == want:
		return "the same path as"
	case strings.HasPrefix(want, strings.TrimSuffix(have, "/")+"/"):
		return "which contains"
	case strings.HasPrefix(have, strings.TrimSuffix(want, "/")+"/"):
		return "which sits inside"
	}
	return ""
}

func reloadMode(spec string) string {
	mode, _, _ := strings.Cut(spec, ":")
	return mode
}

// isAgent tells the k8secrets agents (of any injection) from app containers.
func isAgent(name string) bool {
	return strings.HasPrefix(name, wellknown.AgentContainerPrefix+"-")
}

func chooseContainers(w workload.Workload, tmpl *corev1.PodTemplateSpec, want []string) ([]string, error) {
	var apps []string
	for _, c := range tmpl.Spec.Containers {
		if !isAgent(c.Name) {
			apps = append(apps, c.Name)
		}
	}
	if len(want) == 0 {
		return apps, nil
	}
	var missing []string
	for _, n := range want {
		found := false
		for _, a := range apps {
			found = found || a == n
		}
		if !found {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s has no container %s; its containers are %s; fix --container",
			ErrConflict, w, strings.Join(missing, ", "), strings.Join(apps, ", "))
	}
	return want, nil
}

func checkConflicts(w workload.Workload, tmpl *corev1.PodTemplateSpec, vol string, o Options, containers []string) error {
	var errs []error
	conflict := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: "+format, append([]any{ErrConflict, w}, a...)...))
	}
	// Volumes that carry this Secret, under any name.
	carries := map[string]bool{}
	for _, v := range tmpl.Spec.Volumes {
		switch {
		case v.Secret != nil && v.Secret.SecretName == o.Secret:
			carries[v.Name] = true
		case v.Projected != nil:
			for _, s := range v.Projected.Sources {
				if s.Secret != nil && s.Secret.Name == o.Secret {
					carries[v.Name] = true
				}
			}
		}
		if v.Name == vol && !(v.Secret != nil && v.Secret.SecretName == o.Secret) {
			conflict("volume %q already exists with another source; rename it or remove it", vol)
		}
	}
	all := append(append([]corev1.Container{}, tmpl.Spec.InitContainers...), tmpl.Spec.Containers...)
	for _, c := range all {
		for _, m := range c.VolumeMounts {
			if carries[m.Name] && (m.SubPath != "" || m.SubPathExpr != "") {
				conflict("container %q mounts secret %s through subPath %q (volume %q): a subPath mount never receives updates; mount the whole volume instead and remove the subPath mount",
					c.Name, o.Secret, m.SubPath+m.SubPathExpr, m.Name)
			}
		}
	}
	chosen := map[string]bool{}
	for _, n := range containers {
		chosen[n] = true
	}
	for _, c := range tmpl.Spec.Containers {
		if !chosen[c.Name] {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == vol {
				continue
			}
			if how := overlap(m.MountPath, o.MountPath); how != "" {
				conflict("container %q already mounts volume %q at %s, %s %s; choose another --mount-path", c.Name, m.Name, m.MountPath, how, o.MountPath)
			}
		}
	}
	return errors.Join(errs...)
}

// agentContainer builds the reload sidecar. It runs as the app's user where
// the reload mode signals or restarts a process: a signal between different
// users fails with EPERM, and a capability such as CAP_KILL added to a
// non-root container is not effective, so sharing the user is the only way
// that keeps the agent non-root.
func agentContainer(tmpl *corev1.PodTemplateSpec, id string, o Options, apps []string, mount *corev1ac.VolumeMountApplyConfiguration) (*corev1ac.ContainerApplyConfiguration, []string) {
	var notes []string
	uid, gid := int64(wellknown.AgentUID), int64(wellknown.AgentUID)
	if mode := reloadMode(o.Reload); mode == "signal" || mode == "restart" {
		u, g, note := appUser(tmpl, apps)
		if note != "" {
			notes = append(notes, note)
		}
		switch {
		case u == nil:
		case *u == 0:
			notes = append(notes, fmt.Sprintf("the app runs as root: the non-root agent cannot %s it (EPERM); run the app as a non-root user, or reload with --reload=http:URL", mode))
		default:
			uid = *u
			gid = uid
			if g != nil {
				gid = *g
			}
		}
	}
	port := agentPort(tmpl, AgentName(id))
	get := func(path string) *corev1ac.HTTPGetActionApplyConfiguration {
		return corev1ac.HTTPGetAction().WithPath(path).WithPort(intstr.FromInt32(port))
	}
	probe := corev1ac.Probe().WithHTTPGet(get("/healthz")).WithPeriodSeconds(10).WithFailureThreshold(3)
	// A native sidecar's startup gates the app containers: the kubelet
	// starts them only once this probe passes, so an agent that cannot
	// start (bad flags, unreadable mount) holds the new pods back and fails
	// the rollout, which is rolled back, instead of passing it. 30 s to
	// start; it is ready once it has read every watched directory.
	startup := corev1ac.Probe().WithHTTPGet(get("/healthz")).WithPeriodSeconds(1).WithFailureThreshold(30)
	ready := corev1ac.Probe().WithHTTPGet(get("/readyz")).WithPeriodSeconds(5).WithFailureThreshold(3)
	c := corev1ac.Container().
		WithName(AgentName(id)).
		WithImage(o.AgentImage).
		WithImagePullPolicy(corev1.PullIfNotPresent).
		WithArgs(
			"--watch="+o.MountPath,
			"--reload="+o.Reload,
			"--listen=:"+strconv.Itoa(int(port)),
			"--log-format=json",
		).
		WithVolumeMounts(mount).
		WithStartupProbe(startup).
		WithReadinessProbe(ready).
		WithLivenessProbe(probe).
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("5m"),
				corev1.ResourceMemory: resource.MustParse("16Mi"),
			}).
			WithLimits(corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")})).
		WithSecurityContext(corev1ac.SecurityContext().
			WithRunAsNonRoot(true).
			WithRunAsUser(uid).
			WithRunAsGroup(gid).
			WithReadOnlyRootFilesystem(true).
			WithAllowPrivilegeEscalation(false).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault)))
	return c, notes
}

// appUser is the user (and group) the chosen app containers run as, when the
// pod template says so and they agree.
func appUser(tmpl *corev1.PodTemplateSpec, apps []string) (uid, gid *int64, note string) {
	var podUID, podGID *int64
	if sc := tmpl.Spec.SecurityContext; sc != nil {
		podUID, podGID = sc.RunAsUser, sc.RunAsGroup
	}
	chosen := map[string]bool{}
	for _, n := range apps {
		chosen[n] = true
	}
	first := true
	for _, c := range tmpl.Spec.Containers {
		if !chosen[c.Name] {
			continue
		}
		u, g := podUID, podGID
		if sc := c.SecurityContext; sc != nil {
			if sc.RunAsUser != nil {
				u = sc.RunAsUser
			}
			if sc.RunAsGroup != nil {
				g = sc.RunAsGroup
			}
		}
		if u == nil {
			return nil, nil, fmt.Sprintf("container %q sets no runAsUser (its image's user applies): the agent runs as %d and can signal the app only if it runs as %d too; set runAsUser on the app", c.Name, wellknown.AgentUID, wellknown.AgentUID)
		}
		if first {
			uid, gid, first = u, g, false
			continue
		}
		if *u != *uid {
			return nil, nil, fmt.Sprintf("the app containers run as different users (%d, %d): the agent can signal only one of them; run them as one user, or choose one with --container", *uid, *u)
		}
	}
	return uid, gid, ""
}

// agentPort picks the port of the agent's health and metrics server: the
// one this injection's agent already has, else the first port from the
// default up that no container of the pod uses (each injection has its own
// agent, and containers of a pod share the network namespace).
func agentPort(tmpl *corev1.PodTemplateSpec, name string) int32 {
	used := map[int32]bool{}
	all := append(append([]corev1.Container{}, tmpl.Spec.InitContainers...), tmpl.Spec.Containers...)
	for _, c := range all {
		p := int32(0)
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--listen=:"); ok {
				if n, err := strconv.Atoi(v); err == nil {
					p = int32(n)
				}
			}
		}
		if c.Name == name && p != 0 {
			return p
		}
		if p != 0 {
			used[p] = true
		}
		for _, cp := range c.Ports {
			used[cp.ContainerPort] = true
		}
	}
	p := int32(wellknown.AgentPort)
	for used[p] {
		p++
	}
	return p
}
