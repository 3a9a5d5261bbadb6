package plan

import (
	"fmt"
	"path"

	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/k8secrets/k8secrets/internal/wellknown"
)

// TurnVolumeName is the downward API volume of the agent's turns.
func TurnVolumeName(id string) string {
	return wellknown.VolumePrefix + id + wellknown.TurnVolumeSuffix
}

// withTurns gives the agent of a restart or restart-all injection the pod's
// k8secrets.io/refreshed-at annotation as a file, and --turn-file: it then
// restarts the app only on the pod's turn, which the watch and refresh
// give one pod at a time, and not whenever the kubelet's periodic sync
// happens to deliver new content to the pod (several pods at once). The
// pod's k8secrets.io/restart-held annotation, beside it (--held-file), keeps
// the agent waiting past its --turn-hold while the Job holds the pod.
//
// A restart then needs no random delay (the agent's --restart-jitter, there
// so that replicas given new content together do not restart together):
// the turns space the restarts, and the delay would only add to each.
func withTurns(spec *corev1ac.PodSpecApplyConfiguration, agent *corev1ac.ContainerApplyConfiguration, id, mode string) {
	if mode == "restart" {
		agent.WithArgs("--restart-jitter=0s")
	}
	spec.WithVolumes(corev1ac.Volume().WithName(TurnVolumeName(id)).
		WithDownwardAPI(corev1ac.DownwardAPIVolumeSource().WithItems(
			corev1ac.DownwardAPIVolumeFile().WithPath(wellknown.AgentTurnFile).
				WithFieldRef(corev1ac.ObjectFieldSelector().
					WithFieldPath(fmt.Sprintf("metadata.annotations['%s']", wellknown.RefreshAnnotation))),
			corev1ac.DownwardAPIVolumeFile().WithPath(wellknown.AgentHeldFile).
				WithFieldRef(corev1ac.ObjectFieldSelector().
					WithFieldPath(fmt.Sprintf("metadata.annotations['%s']", wellknown.HeldAnnotation))))))
	agent.WithArgs("--turn-file="+path.Join(wellknown.AgentTurnDir, wellknown.AgentTurnFile),
		"--held-file="+path.Join(wellknown.AgentTurnDir, wellknown.AgentHeldFile)).
		WithVolumeMounts(corev1ac.VolumeMount().WithName(TurnVolumeName(id)).WithMountPath(wellknown.AgentTurnDir).WithReadOnly(true))
}
