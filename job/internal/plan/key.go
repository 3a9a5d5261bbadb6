package plan

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/k8secrets/k8secrets/internal/contentid"
)

// newKey makes the content key of a new injection; tests replace it.
var newKey = contentid.NewKey

// contentKey is the key that the agent of injection id gets in its
// environment (contentid.KeyEnv), with which it names the content it has
// loaded: the one the current template's agent already has, so that a
// rerun changes nothing and the Job can still check the pods of the
// current revision, else a fresh one. A value that is not a valid key (a
// hand edit) is replaced.
func contentKey(tmpl *corev1.PodTemplateSpec, id string) (string, error) {
	if k := KeyOf(tmpl.Spec, id); k != "" {
		if _, err := contentid.Of(k, nil); err == nil {
			return k, nil
		}
	}
	return newKey()
}

// KeyOf is the literal content key in the environment of injection id's
// agent in spec (a pod's or a template's), "" if there is none.
func KeyOf(spec corev1.PodSpec, id string) string {
	if c := AgentOf(spec, id); c != nil {
		for _, e := range c.Env {
			if e.Name == contentid.KeyEnv && e.ValueFrom == nil {
				return e.Value
			}
		}
	}
	return ""
}

// AgentOf is injection id's agent container in spec, a native sidecar or a
// regular container; nil if there is none.
func AgentOf(spec corev1.PodSpec, id string) *corev1.Container {
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for i := range cs {
			if cs[i].Name == AgentName(id) {
				return &cs[i]
			}
		}
	}
	return nil
}

// Redacted is a copy of t with every content key in it replaced, for
// showing t (a dry-run's diff): the key lets whoever has it test guesses
// of the Secret's values against what the agents serve.
func Redacted(t *corev1.PodTemplateSpec) *corev1.PodTemplateSpec {
	if t == nil {
		return nil
	}
	t = t.DeepCopy()
	for _, cs := range [][]corev1.Container{t.Spec.InitContainers, t.Spec.Containers} {
		for i := range cs {
			for k := range cs[i].Env {
				if cs[i].Env[k].Name == contentid.KeyEnv && cs[i].Env[k].Value != "" {
					cs[i].Env[k].Value = "(redacted)"
				}
			}
		}
	}
	return t
}
