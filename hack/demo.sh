#!/usr/bin/env bash
# make demo: on the kind cluster of `make cluster`, deploy the demo app and its
# Secret, run the Job manifest, show the Secret mounted in every pod, update
# the Secret, refresh, and show each app reloading in place: same pod, same
# restartCount, reload count +1. Prints each step with its timing.
# Expects: KUBE_BIN (kubectl), KIND_KUBECONFIG, BIN (k8secrets-job), the
# images k8secrets-{job,agent,demo}:demo loaded into the cluster.
set -euo pipefail
export KUBECONFIG=${KIND_KUBECONFIG:?}
kubectl=${KUBE_BIN:?}/kubectl
job=${BIN:?}/k8secrets-job
ns=k8secrets-demo
here=$(cd "$(dirname "$0")/.." && pwd)

t0=$(date +%s.%N)
step_start=$t0
step() { # step "what": starts a step; took prints its time
	printf '\n\033[1m==> %s\033[0m\n' "$1"
	step_start=$(date +%s.%N)
}
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
took() { echo "    ($(since "$step_start") s)"; }

# app NAME PATH: GET through the API server's pod proxy (FROM-scratch images
# have no shell to exec into).
app() { "$kubectl" get --raw "/api/v1/namespaces/$ns/pods/$1:8080/proxy$2"; }
pods() {
	"$kubectl" -n "$ns" get pods -l app=demo --field-selector=status.phase=Running \
		-o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.metadata.deletionTimestamp}{"\n"}{end}' | awk -F'|' '$2=="" {print $1}'
}
restarts() { "$kubectl" -n "$ns" get pod "$1" -o jsonpath='{.status.containerStatuses[?(@.name=="demo")].restartCount}'; }

step "Deploy the demo app and its Secret (no injection yet)"
"$kubectl" apply --server-side -k "$here/manifests/demo" -l 'app.kubernetes.io/component!=job' >/dev/null
"$kubectl" -n "$ns" rollout status deployment/demo --timeout=120s
for p in $(pods); do echo "    $p: $(app "$p" /)"; done
took

step "Run the Job manifest: inject demo-secret into the pods matching app=demo"
"$kubectl" -n "$ns" delete job k8secrets-inject --ignore-not-found >/dev/null
"$kubectl" apply --server-side -k "$here/manifests/demo" >/dev/null
if ! "$kubectl" -n "$ns" wait --for=condition=complete job/k8secrets-inject --timeout=300s >/dev/null; then
	"$kubectl" -n "$ns" logs job/k8secrets-inject || true
	echo "the Job did not complete" >&2
	exit 1
fi
"$kubectl" -n "$ns" logs job/k8secrets-inject | grep -v '^{' || true
"$kubectl" -n "$ns" rollout status deployment/demo --timeout=120s
took

step "The Secret is mounted in every pod, and the agent runs beside the app"
before=()
for p in $(pods); do
	mounts=$("$kubectl" -n "$ns" get pod "$p" -o jsonpath='{.spec.containers[?(@.name=="demo")].volumeMounts[*].mountPath}')
	agent=$("$kubectl" -n "$ns" get pod "$p" -o jsonpath='{.spec.initContainers[*].name}')
	state=$(app "$p" /)
	echo "    $p: mount $mounts, sidecar $agent"
	echo "      app: $state"
	case $state in *'"version":"v1"'*) ;; *) echo "pod $p did not load version v1" >&2; exit 1;; esac
	before+=("$p=$(restarts "$p")")
done
took

step "Update the Secret to v2 and refresh (annotate the pods so their kubelets resync now)"
"$kubectl" -n "$ns" create secret generic demo-secret --from-literal=version=v2 --from-literal=password=demo-password-v2 \
	--dry-run=client -o yaml | "$kubectl" apply --server-side --force-conflicts -f - >/dev/null
"$job" refresh --secret demo-secret -n "$ns" --log-format json 2>/dev/null
deadline=$(( $(date +%s) + 120 ))
for p in $(pods); do
	until app "$p" / | grep -q '"version":"v2"'; do
		if [ "$(date +%s)" -gt "$deadline" ]; then echo "pod $p never reloaded v2" >&2; exit 1; fi
		sleep 0.2
	done
done
took

step "Every app reloaded in place: same pod, same restartCount, reload count +1"
for entry in "${before[@]}"; do
	p=${entry%%=*}; r=${entry#*=}
	state=$(app "$p" /)
	now=$(restarts "$p")
	echo "    $p: restartCount $r -> $now; app: $state"
	[ "$now" = "$r" ] || { echo "pod $p restarted" >&2; exit 1; }
	case $state in *'"reloads":1'*) ;; *) echo "pod $p: reload count is not 1" >&2; exit 1;; esac
done
took

echo
echo "Demo done in $(since "$t0") s. \`make demo-down\` removes the demo namespace; \`make cluster-down\` the cluster."
