package plan

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/k8secrets/k8secrets/internal/wellknown"
)

func restartAllOpts(o *Options) {
	o.Reload = "restart-all"
	o.RestartAllContainers = true
}

func TestInjectRestartAllGolden(t *testing.T) {
	fixKey(t)
	ch, err := Inject(deployment("web", withUser("app", 1000), withContainer("proxy")), opts(restartAllOpts))
	if err != nil {
		t.Fatalf("Inject(restart-all) = %v", err)
	}
	got, err := yaml.Marshal(map[string]any{"apply": ch.Apply, "hash": ch.Hash, "notes": ch.Notes, "fieldManager": FieldManager(ch.ID)})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "deployment-restart-all", got)
}

// restart-all is refused before any write where the server has no restart
// rules, and the dry-run's answer is checked for a rule the server dropped.
func TestRestartAllNeedsTheServer(t *testing.T) {
	w := deployment("web", withUser("app", 1000))
	for name, o := range map[string]Options{
		"server before 1.36":       opts(restartAllOpts, func(o *Options) { o.RestartAllContainers = false }),
		"agent not native sidecar": opts(restartAllOpts, func(o *Options) { o.NativeSidecar = false }),
	} {
		if _, err := Inject(w, o); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "use --reload restart") {
			t.Errorf("Inject(restart-all, %s) = %v; want ErrConflict advising --reload restart", name, err)
		}
	}
	ch, err := Inject(w, opts(restartAllOpts))
	if err != nil || ch.Check == nil {
		t.Fatalf("Inject(restart-all) = check %v, %v; want a check of the dry-run's template", ch.Check != nil, err)
	}
	kept := corev1.PodTemplateSpec{Spec: corev1.PodSpec{InitContainers: []corev1.Container{{
		Name: AgentName(ch.ID),
		RestartPolicyRules: []corev1.ContainerRestartRule{{
			Action:    corev1.ContainerRestartRuleActionRestartAllContainers,
			ExitCodes: &corev1.ContainerRestartRuleOnExitCodes{Operator: corev1.ContainerRestartRuleOnExitCodesOpIn, Values: []int32{wellknown.RestartAllExitCode}},
		}},
	}}}}
	if err := ch.Check(&kept); err != nil {
		t.Errorf("Check(template with the rule) = %v; want nil", err)
	}
	dropped := kept.DeepCopy()
	dropped.Spec.InitContainers[0].RestartPolicyRules = nil
	if err := ch.Check(dropped); err == nil || !strings.Contains(err.Error(), "dropped") {
		t.Errorf("Check(template without the rule) = %v; want an error saying the server dropped it", err)
	}
	if other, _ := Inject(w, opts()); other.Check != nil {
		t.Error("Inject(restart) has a Check; only restart-all needs one")
	}
}
