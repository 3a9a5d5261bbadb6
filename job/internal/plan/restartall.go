package plan

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/k8secrets/k8secrets/internal/wellknown"
)

// StateVolumeName is the emptyDir of the agent's restart-all state.
func StateVolumeName(id string) string {
	return wellknown.VolumePrefix + id + wellknown.StateVolumeSuffix
}

// withRestartAll makes the agent of a restart-all injection able to restart
// the pod: the restart rule on exactly the agent's restart-all exit code,
// and an emptyDir for its state (the content it last restarted the pod
// for), which outlives the restart so that it asks once per content.
func withRestartAll(spec *corev1ac.PodSpecApplyConfiguration, agent *corev1ac.ContainerApplyConfiguration, id string) {
	agent.WithRestartPolicyRules(corev1ac.ContainerRestartRule().
		WithAction(corev1.ContainerRestartRuleActionRestartAllContainers).
		WithExitCodes(corev1ac.ContainerRestartRuleOnExitCodes().
			WithOperator(corev1.ContainerRestartRuleOnExitCodesOpIn).
			WithValues(wellknown.RestartAllExitCode))).
		WithArgs("--state-dir=" + wellknown.AgentStateDir).
		WithVolumeMounts(corev1ac.VolumeMount().WithName(StateVolumeName(id)).WithMountPath(wellknown.AgentStateDir))
	spec.WithVolumes(corev1ac.Volume().WithName(StateVolumeName(id)).
		WithEmptyDir(corev1ac.EmptyDirVolumeSource().
			WithMedium(corev1.StorageMediumMemory).
			WithSizeLimit(resource.MustParse("1Mi"))))
}

// keepsRestartRule checks the template the API server would store: a server
// whose ContainerRestartRules feature is off drops restartPolicyRules
// silently, and an agent that then exits with its restart-all code would
// only restart itself, forever, while the app keeps the old content.
func keepsRestartRule(id string) func(*corev1.PodTemplateSpec) error {
	return func(t *corev1.PodTemplateSpec) error {
		for _, c := range append(append([]corev1.Container{}, t.Spec.InitContainers...), t.Spec.Containers...) {
			if c.Name != AgentName(id) {
				continue
			}
			for _, r := range c.RestartPolicyRules {
				if r.Action == corev1.ContainerRestartRuleActionRestartAllContainers {
					return nil
				}
			}
		}
		return fmt.Errorf("the API server dropped the agent's restartPolicyRules (its ContainerRestartRules or RestartAllContainersOnContainerExits feature is off): --reload restart-all cannot work there; use --reload restart")
	}
}
