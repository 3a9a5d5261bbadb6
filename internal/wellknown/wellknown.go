// Package wellknown holds the names k8secrets writes into the cluster and the
// pod: labels, annotations, the field manager and the default mount directory.
// They are part of the contract with users (selectors, dashboards, policies)
// and between the Job and the agent, so they change only with a major version.
package wellknown

const (
	// Domain prefixes every label and annotation key.
	Domain = "k8secrets.io"

	// FieldManager is the server-side apply field manager. Each injected
	// Secret gets its own manager, FieldManager + "/" + the injection ID, so
	// that injections of different Secrets into one workload own disjoint
	// fields and removing one leaves the others untouched.
	FieldManager = "k8secrets"

	// LabelInjected marks a workload that carries at least one injection.
	LabelInjected = Domain + "/injected"

	// AnnotationSecretPrefix + ID on the pod template names the injected Secret.
	AnnotationSecretPrefix = Domain + "/secret-"
	// AnnotationHashPrefix + ID on the pod template holds the injection hash:
	// a digest of the injection's intent (not of the Secret's data), so a
	// rerun with the same intent changes nothing.
	AnnotationHashPrefix = Domain + "/hash-"

	// AnnotationPreviousPrefix + ID on the workload (not its pod template)
	// records, in the same apply as the change, the injection's intent
	// before that change (JSON; an empty object for a first injection): a
	// rerun that finds the rollout it started failing goes back to it.
	AnnotationPreviousPrefix = Domain + "/previous-"

	// RefreshAnnotation on a Pod is changed by "k8secrets-job refresh" to make
	// the kubelet resync that pod, and so its Secret volumes, at once.
	RefreshAnnotation = Domain + "/refreshed-at"
	// HeldAnnotation on a Pod says why the Job holds it (not empty): the
	// pods a one-at-a-time pass has yet to restart, and a workload's pods
	// while its rotation waits for pods to be available. Their agents then
	// restart only on their turn, not after --turn-hold. A poke removes it.
	HeldAnnotation = Domain + "/restart-held"

	// DefaultMountDir is the parent of the default mount path,
	// DefaultMountDir/<secret>.
	DefaultMountDir = "/var/run/secrets/k8secrets"

	// AgentContainerPrefix + "-" + ID names the reload sidecar.
	AgentContainerPrefix = "k8secrets-agent"
	// VolumePrefix + ID names the Secret volume.
	VolumePrefix = "k8secrets-"

	// AgentPort serves the agent's /healthz, /readyz and /metrics.
	AgentPort = 9533

	// AgentUID is the agent's user when the app's user is unknown: the
	// distroless "nonroot" user, as in the images.
	AgentUID = 65532

	// RestartAllExitCode is the agent's exit code in --reload=restart-all
	// mode: its container's restartPolicyRules tell the kubelet to restart
	// every container of the pod in place on exactly this code (KEP-5532).
	// The agent exits with it only on purpose, once per content: never for
	// an error (1), a bad configuration (2), a Go runtime crash (2) or a
	// signal (128+n), since the kubelet applies no crash-loop backoff to it.
	RestartAllExitCode = 87
	// AgentStateDir holds, on an emptyDir that outlives the agent's
	// container restarts, the content the agent last restarted the pod for.
	AgentStateDir = "/var/run/k8secrets-agent/state"
	// StateVolumeSuffix: VolumePrefix + ID + StateVolumeSuffix names it.
	StateVolumeSuffix = "-state"

	// AgentTurnDir holds, in the agent of a restart or restart-all
	// injection, a downward API file (AgentTurnFile) of the pod's
	// RefreshAnnotation: the agent restarts the app only when it changes,
	// that is when the Job's watch or refresh gives the pod its turn.
	AgentTurnDir  = "/var/run/k8secrets-agent/turn"
	AgentTurnFile = "refreshed-at"
	// AgentHeldFile, beside it, is the pod's HeldAnnotation.
	AgentHeldFile = "restart-held"
	// TurnVolumeSuffix: VolumePrefix + ID + TurnVolumeSuffix names it.
	TurnVolumeSuffix = "-turn"

	// TargetMountDir + "/" + ID is where an injection's target marker, an
	// empty memory-backed emptyDir (a tmpfs of its own), is mounted
	// read-only into the agent and into the app containers that take the
	// Secret through env (and so do not mount it): the agent restarts the
	// containers that hold that mount (--target-mount), and only those.
	TargetMountDir = "/var/run/k8secrets-target"
	// TargetVolumeSuffix: VolumePrefix + ID + TargetVolumeSuffix names it.
	TargetVolumeSuffix = "-target"
)
