package plan

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/k8secrets/k8secrets/internal/contentid"
)

// appliedKey is the content key in the agent of ch's apply configuration
// (a Deployment's), "" if none.
func appliedKey(t *testing.T, ch Change) string {
	t.Helper()
	a := ch.Apply.(*appsv1ac.DeploymentApplyConfiguration)
	spec := a.Spec.Template.Spec
	for _, cs := range [][]corev1ac.ContainerApplyConfiguration{spec.InitContainers, spec.Containers} {
		for _, c := range cs {
			if *c.Name != AgentName(ch.ID) {
				continue
			}
			for _, e := range c.Env {
				if *e.Name == contentid.KeyEnv {
					return *e.Value
				}
			}
		}
	}
	return ""
}

// withAgentKey gives the template the agent of db-creds, with key.
func withAgentKey(key string) podOpt {
	return func(t *corev1.PodTemplateSpec) {
		t.Spec.InitContainers = append(t.Spec.InitContainers, corev1.Container{Name: AgentName("db-creds"),
			Env: []corev1.EnvVar{{Name: "OTHER", Value: "x"}, {Name: contentid.KeyEnv, Value: key}}})
	}
}

func TestInjectContentKey(t *testing.T) {
	a, err := Inject(deployment("web", withUser("app", 1000)), opts())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Inject(deployment("web", withUser("app", 1000)), opts())
	ka, kb := appliedKey(t, a), appliedKey(t, b)
	if _, err := contentid.Of(ka, nil); err != nil {
		t.Fatalf("Inject(new).key is not a content key: %v", err)
	}
	if ka == kb {
		t.Errorf("two new injections got the same content key; want a fresh one each")
	}
	if a.Hash != b.Hash {
		t.Errorf("two new injections with different keys: hashes %s, %s; want the same (the key is not intent)", a.Hash, b.Hash)
	}

	// A rerun keeps the key the template's agent has, and changes nothing.
	injected := deployment("web", withUser("app", 1000), withAgentKey(ka), func(t *corev1.PodTemplateSpec) {
		t.Annotations = map[string]string{HashAnnotation("db-creds"): a.Hash}
	})
	c, _ := Inject(injected, opts())
	if got := appliedKey(t, c); got != ka || c.Skip == "" || c.Hash != a.Hash {
		t.Errorf("Inject(already injected) = skip %q, hash %s, same key %v; want a skip, hash %s and the same key", c.Skip, c.Hash, got == ka, a.Hash)
	}
	// A new intent (agent image) keeps the key too.
	d, _ := Inject(injected, opts(func(o *Options) { o.AgentImage = "k8secrets-agent:v2" }))
	if appliedKey(t, d) != ka || d.Skip != "" {
		t.Errorf("Inject(new agent image) = skip %q, same key %v; want a change keeping the key", d.Skip, appliedKey(t, d) == ka)
	}
	// An injection from before content keys: a change that adds one.
	old := deployment("web", withUser("app", 1000), func(t *corev1.PodTemplateSpec) {
		t.Spec.InitContainers = []corev1.Container{{Name: AgentName("db-creds")}}
		t.Annotations = map[string]string{HashAnnotation("db-creds"): "0123456789abcdef"}
	})
	e, _ := Inject(old, opts())
	if k := appliedKey(t, e); k == "" || e.Skip != "" {
		t.Errorf("Inject(injected without a key) = skip %q, key set %v; want a change adding a key", e.Skip, k != "")
	}
	// A hand-edited, invalid key is replaced.
	f, _ := Inject(deployment("web", withAgentKey("not-a-key")), opts())
	if k := appliedKey(t, f); k == "not-a-key" || k == "" {
		t.Errorf("Inject(invalid key in the template) kept it or set none")
	}
	// No agent, no key.
	g, _ := Inject(deployment("web"), opts(func(o *Options) { o.Agent = false }))
	if k := appliedKey(t, g); k != "" {
		t.Errorf("Inject(--no-agent) set a content key")
	}
}

func TestRedacted(t *testing.T) {
	const key = goldenKey
	tmpl := template(withAgentKey(key))
	out, _ := yaml.Marshal(Redacted(&tmpl))
	if strings.Contains(string(out), key) || !strings.Contains(string(out), "(redacted)") {
		t.Errorf("Redacted(template) =\n%s\nwant the key replaced", out)
	}
	if KeyOf(tmpl.Spec, "db-creds") != key {
		t.Errorf("Redacted changed its argument")
	}
	if !strings.Contains(string(out), "value: x") {
		t.Errorf("Redacted(template) =\n%s\nwant other variables kept", out)
	}
}
